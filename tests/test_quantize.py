"""Quantizer invariants on tiny tensors, parametrized over the options of VQConfig and FSQConfig."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from einops import rearrange
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from vqgpt.config import CONFIG_DIR, FSQConfig, VQConfig, register_configs, to_object
from vqgpt.errors import UserError
from vqgpt.tokenizers.quantizers import Quantizer, build_quantizer
from vqgpt.tokenizers.quantizers.vq import rotate_to

K, D = 16, 8


def make(**kw) -> Quantizer:
    if kw.pop("name", "vq") == "fsq":
        return build_quantizer(FSQConfig(**{"embedding_dim": D, **kw}))
    return build_quantizer(VQConfig(**{"num_codewords": K, "embedding_dim": D, **kw}))


def latents(q: Quantizer | None = None, b: int = 2, h: int = 3, w: int = 3, seed: int = 0) -> torch.Tensor:
    d = q.cfg.embedding_dim if q is not None else D
    return torch.randn(b, d, h, w, generator=torch.Generator().manual_seed(seed))  # (B, D, H, W)


def train_steps(q: Quantizer, n: int, seed: int = 0) -> None:
    """n training forwards (the quantizer's own state updates; no optimizer)."""
    q.train()
    for i in range(n):
        z = latents(q, seed=seed + i).requires_grad_()
        out = q(z)
        if torch.is_grad_enabled():
            (out.z_q.square().mean() + out.loss).backward()


VQ_CASES = {
    "plain": {},
    "cosine": dict(cos_dist=True),
    "factorised": dict(proj_dim=4),
    "cosine_factorised": dict(cos_dist=True, proj_dim=4),
    "random_proj": dict(random_proj=3),
    "cosine_random_proj": dict(cos_dist=True, random_proj=6),
    "ema": dict(decay=0.9),
    "ema_cosine_factorised": dict(decay=0.9, cos_dist=True, proj_dim=4),
    "rotation": dict(gradient="rotation"),
    "rotation_cosine_factorised": dict(gradient="rotation", cos_dist=True, proj_dim=4),
    "uniform": dict(init_method="uniform"),
    "latent_random": dict(init_method="latent_random"),
    "kmeans": dict(init_method="kmeans", kmeans_iters=3),
    "pretrain": dict(pretrain_steps=2, init_method="latent_random"),
    "penalty": dict(penalty_weight=0.1, penalty_sample_weight=0.1),
    "restart": dict(restart_after=1),
    "simvq": dict(reparam=True),
    "simvq_cosine_factorised_restart": dict(reparam=True, cos_dist=True, proj_dim=4, restart_after=1,
                                            init_method="latent_random"),
    "everything": dict(cos_dist=True, proj_dim=4, random_proj=3, init_method="kmeans", pretrain_steps=1,
                       penalty_weight=0.1, penalty_sample_weight=0.1, decay=0.9, restart_after=1,
                       gradient="rotation"),
}
FSQ_CASES = {
    "fsq_projected": dict(name="fsq", levels=[3, 4, 5]),  # D = 8 -> 3 channels -> 8
    "fsq_direct": dict(name="fsq", levels=[4, 3], embedding_dim=2),
}
ALL_CASES = {**VQ_CASES, **FSQ_CASES}
all_cases = pytest.mark.parametrize("kw", list(ALL_CASES.values()), ids=list(ALL_CASES))


@all_cases
def test_eval_forward_equals_dequantize_of_quantize(kw):
    q = make(**kw)
    train_steps(q, 3)  # past pretrain_steps and the latent-based init
    q.eval()
    z = latents(q, seed=10)
    out = q(z)
    assert out.z_q.shape == z.shape and out.indices.shape == (2, 3, 3) and out.indices.dtype == torch.long
    assert 0 <= out.indices.min() and out.indices.max() < q.num_codewords
    assert torch.equal(q.quantize(z), out.indices)
    torch.testing.assert_close(q.dequantize(out.indices), out.z_q)
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)


@all_cases
def test_metrics_present_and_in_range(kw):
    q = make(**kw)
    train_steps(q, 2)
    out = q(latents(q, seed=5))
    assert set(out.metrics) == {"perplexity", "usage", "dead_codes"}
    m = {k: float(v) for k, v in out.metrics.items()}
    assert all(v.dim() == 0 for v in out.metrics.values())
    assert 1 - 1e-4 <= m["perplexity"] <= q.num_codewords + 1e-4
    assert 0 < m["usage"] <= 1 and 0 <= m["dead_codes"] <= q.num_codewords


@all_cases
def test_gradients_reach_the_encoder(kw):
    q = make(**kw)
    with torch.no_grad():
        train_steps(q, 2)  # leave the warm start
    z = latents(q).requires_grad_()
    out = q(z)
    (out.z_q * torch.randn_like(out.z_q)).sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


@pytest.mark.parametrize("kw", [{}, dict(cos_dist=True), dict(random_proj=3)], ids=["plain", "cosine", "rp"])
def test_autocast_does_not_change_the_nearest_neighbour(kw):
    q = make(num_codewords=256, **kw).eval()
    z = latents(q, b=4, h=8, w=8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = q(z).indices
    assert torch.equal(low, q(z).indices)


def test_rotation_trick_keeps_the_value_and_changes_the_gradient():
    src = torch.randn(5, 4, requires_grad=True)
    tgt = torch.randn(5, 4)
    out = rotate_to(src, tgt)
    torch.testing.assert_close(out, tgt)
    grad = torch.randn(5, 4)
    out.backward(grad)
    assert not torch.allclose(src.grad, grad)  # the STE would copy the gradient unchanged
    # The rotation preserves the gradient's norm up to the rescaling |tgt| / |src| (Fifty et al. 2024).
    scale = tgt.norm(dim=-1) / src.norm(dim=-1)
    torch.testing.assert_close(src.grad.norm(dim=-1), grad.norm(dim=-1) * scale.detach())


@pytest.mark.parametrize("kw", [{}, dict(proj_dim=4), dict(decay=0.9), dict(decay=0.9, proj_dim=4),
                                dict(reparam=True)],
                         ids=["loss", "loss_factorised", "ema", "ema_factorised", "simvq"])
def test_codebook_learns_by_gradient_only_without_ema(kw):
    q = make(**kw)
    out = q(latents(q).requires_grad_())
    (out.z_q.square().mean() + out.loss).backward()
    params = dict(q.named_parameters())
    if kw.get("reparam"):  # the basis is frozen; the one linear map learns, and it moves every code
        assert "codebook" not in params and params["reparam.weight"].grad.abs().sum() > 0
    elif kw.get("decay") is None:
        assert params["codebook"].grad is not None and params["codebook"].grad.abs().sum() > 0
    else:
        assert "codebook" not in params and "codebook" in dict(q.named_buffers())
        assert not q.codebook.requires_grad and q.codebook.grad is None
    if kw.get("proj_dim"):
        assert params["in_proj.weight"].grad.abs().sum() > 0 and params["out_proj.weight"].grad.abs().sum() > 0


def test_ema_moves_used_codes_toward_their_latents():
    q = make(decay=0.5).train()
    z = latents(q, b=4)
    x = z.permute(0, 2, 3, 1).reshape(-1, D)  # (N, D)
    idx = q.quantize(z).flatten()
    before = q.codebook.clone()
    q(z)
    for k in idx.unique():
        target = x[idx == k].mean(0)
        assert (q.codebook[k] - target).norm() < (before[k] - target).norm()
    unused = torch.ones(K, dtype=torch.bool)
    unused[idx] = False
    assert torch.equal(q.ema_sum[unused], 0.5 * before[unused])  # unused codes only decay their sums


@pytest.mark.parametrize("kw", [dict(cos_dist=True), dict(cos_dist=True, proj_dim=4),
                                dict(cos_dist=True, random_proj=3, decay=0.9)], ids=["plain", "factorised", "ema_rp"])
def test_cosine_lookup_space_is_unit_norm(kw):
    q = make(**kw)
    train_steps(q, 2)
    q.eval()
    out = q(latents(q))
    codes = q._codes()[out.indices]  # (B, H, W, C): the looked-up codes before out_proj
    torch.testing.assert_close(codes.norm(dim=-1), torch.ones(out.indices.shape))
    if not kw.get("proj_dim"):
        torch.testing.assert_close(out.z_q.norm(dim=1), torch.ones(out.indices.shape))


def test_random_projection_is_a_fixed_buffer_used_for_the_search():
    q = make(random_proj=3)
    assert "search_proj" in dict(q.named_buffers()) and "search_proj" not in dict(q.named_parameters())
    assert "search_proj" in q.state_dict()
    before = q.search_proj.clone()
    opt = torch.optim.Adam(q.parameters(), lr=0.1)
    for i in range(5):
        out = q(latents(q, seed=i).requires_grad_())
        opt.zero_grad()
        (out.z_q.square().mean() + out.loss).backward()
        opt.step()
    assert torch.equal(q.search_proj, before)
    z = latents(q, seed=9)
    x = z.permute(0, 2, 3, 1).reshape(-1, D)
    expected = torch.cdist(x @ q.search_proj, q.codebook @ q.search_proj).argmin(-1)
    assert torch.equal(q.quantize(z).flatten(), expected)


def test_latent_random_codes_are_actual_latents():
    q = make(init_method="latent_random").train()
    z = latents(q)  # N = 18 >= K latents
    q(z)
    x = z.permute(0, 2, 3, 1).reshape(-1, D)
    assert bool(q.initialized)
    assert torch.cdist(q.codebook.detach(), x).min(dim=1).values.max() == 0


def test_kmeans_init_reduces_distortion():
    centers = 3 * torch.randn(K, D, generator=torch.Generator().manual_seed(1))
    pick = torch.randint(K, (4 * 8 * 8,), generator=torch.Generator().manual_seed(2))
    x = centers[pick] + 0.3 * torch.randn(len(pick), D, generator=torch.Generator().manual_seed(3))
    z = x.view(4, 8, 8, D).permute(0, 3, 1, 2)

    def distortion(method: str) -> float:
        torch.manual_seed(0)  # kmeans starts from the same latent sample latent_random keeps
        q = make(init_method=method).train()
        with torch.no_grad():
            q(z)
        return float(torch.cdist(x, q.codebook.detach()).min(dim=1).values.square().mean())

    assert distortion("kmeans") < 0.9 * distortion("latent_random") < 0.9 * distortion("random")


def test_uniform_init_within_bounds():
    q = make(init_method="uniform")
    assert q.codebook.abs().max() <= 1 / K and q.codebook.std() > 0


def test_pretrain_steps_pass_z_through_then_quantize():
    q = make(pretrain_steps=3, init_method="latent_random")
    z = latents(q)
    q.eval()
    assert torch.equal(q(z).z_q, z)  # evaluation during the warm start also sees the autoencoder
    q.train()
    for _ in range(3):
        out = q(z)
        assert torch.equal(out.z_q, z) and float(out.loss.detach()) == 0 and not q.initialized
        assert out.indices.shape == (2, 3, 3) and out.indices.max() < K  # the would-be codes
        out.loss.backward()  # touches every parameter (for DDP) with a zero gradient
        assert torch.equal(q.codebook.grad, torch.zeros_like(q.codebook))
    out = q(z)
    assert bool(q.initialized) and int(q.step) == 4
    assert not torch.allclose(out.z_q, z) and float(out.loss.detach()) > 0
    torch.testing.assert_close(out.z_q, q.dequantize(out.indices))


@pytest.mark.parametrize("decay", [None, 0.9])
def test_dead_codes_are_reseeded_from_batch_latents(decay):
    q = make(restart_after=2, decay=decay).train()
    with torch.no_grad():
        q.codebook[1:] = 100.0  # only code 0 is ever chosen
        if decay:
            q.ema_sum[1:] = 100.0  # the EMA codebook is ema_sum / cluster size (1 at the start)
    z = latents(q)
    x = z.permute(0, 2, 3, 1).reshape(-1, D)
    for _ in range(2):
        assert float(q(z).metrics["dead_codes"]) == 0  # not yet idle for restart_after steps
    out = q(z)  # step 2: codes 1.. idle for 2 steps -> reseeded before the lookup
    assert float(out.metrics["dead_codes"]) == K - 1
    assert q.codebook.abs().max() < 10
    if decay is None:  # (the EMA step after the lookup moves them on toward their latents)
        assert torch.cdist(q.codebook[1:].detach(), x).min(dim=1).values.max() == 0
    assert len(out.indices.unique()) > 1 and int(q.born_at[1:].min()) == 2


def test_simvq_codes_set_from_latents_come_out_of_the_map_exactly():
    q = make(reparam=True, cos_dist=True).train()
    with torch.no_grad():
        q.reparam.weight.copy_(torch.eye(D) + 0.3 * torch.randn(D, D, generator=torch.Generator().manual_seed(0)))
        targets = torch.nn.functional.normalize(torch.randn(3, D), dim=-1)
        mask = torch.zeros(K, dtype=torch.bool)
        mask[[1, 4, 7]] = True
        q._set_codes(mask, targets)
    torch.testing.assert_close(q._codes()[mask], targets, atol=1e-4, rtol=0)


def test_usage_counts_a_rolling_window():
    q = make(usage_window=2).train()
    code_z = lambda ks: q.codebook.detach()[ks].view(1, 1, len(ks), D).permute(0, 3, 1, 2)  # noqa: E731
    q(code_z([0, 1]))
    q(code_z([2, 3]))
    assert float(q(code_z([3, 4])).metrics["usage"]) == 3 / K  # codes 2, 3, 4; 0 and 1 fell out
    out = q(code_z([5, 5, 5, 6]))
    assert float(out.metrics["usage"]) == 4 / K
    torch.testing.assert_close(out.metrics["perplexity"], torch.tensor(math.exp(
        -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))))


def _toy_collapse(penalty_weight: float) -> dict[str, float]:
    """Latents in 8 tight clusters far from a randn codebook: plain VQ lets one or two codes win them all."""
    torch.manual_seed(0)
    q = make(embedding_dim=2, penalty_weight=penalty_weight, penalty_temperature=1.0, usage_window=20)
    ring = torch.arange(8) * 2 * math.pi / 8
    centers = torch.stack([ring.cos(), ring.sin()], 1) + 4
    opt = torch.optim.Adam(q.parameters(), lr=0.05)
    for _ in range(200):
        z = centers[torch.randint(8, (64,))] + 0.05 * torch.randn(64, 2)
        out = q(z.view(4, 4, 4, 2).permute(0, 3, 1, 2))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    return {k: float(v) for k, v in out.metrics.items()}


def test_penalty_spreads_usage_on_a_collapsing_toy():
    plain, spread = _toy_collapse(0.0), _toy_collapse(0.1)
    assert plain["perplexity"] < 2.5 and spread["perplexity"] > 5
    assert spread["usage"] >= 2 * plain["usage"]


def test_penalty_weight_decays_linearly_to_its_final_value():
    q = make(penalty_weight=0.1, penalty_final=0.02, penalty_decay_steps=4).train()
    weights = []
    for _ in range(6):
        weights.append(q._penalty_weight())
        q(latents(q))
    assert weights == pytest.approx([0.1, 0.08, 0.06, 0.04, 0.02, 0.02])
    assert make(penalty_weight=0.1)._penalty_weight() == 0.1  # no schedule: fixed


def test_fsq_indices_are_a_bijection_onto_the_grid():
    q = make(name="fsq", levels=[3, 4, 5], embedding_dim=3)  # no projection
    assert q.num_codewords == 60
    idx = torch.arange(60).view(1, 6, 10)
    codes = q.dequantize(idx)  # (1, 3, 6, 10)
    assert codes.abs().max() <= 1 and len(codes[0].flatten(1).t().unique(dim=0)) == 60  # 60 distinct points
    # Latents that the bound maps exactly onto each grid point: every index is reached, and maps back.
    digits = codes.permute(0, 2, 3, 1) * q.half_width  # (1, 6, 10, 3)
    half_l = (q.levels - 1) * (1 + 1e-3) / 2
    offset = (q.levels % 2 == 0).float() * 0.5
    z = torch.atanh((digits + offset) / half_l) - torch.atanh(offset / half_l)
    z = z.permute(0, 3, 1, 2)
    assert torch.equal(q.quantize(z), idx)
    out = q.eval()(z)
    assert torch.equal(out.indices, idx) and torch.equal(out.z_q, codes) and float(out.loss) == 0


@pytest.mark.parametrize("kw,message", [
    (dict(num_codewords=0), r"num_codewords=0 is invalid"),
    (dict(init_method="zeros"), r"init_method='zeros' is invalid: choose one of random, uniform, latent_random"),
    (dict(gradient="gumbel"), r"gradient='gumbel' is invalid: choose one of ste, rotation"),
    (dict(proj_dim=D), r"proj_dim=8 is invalid: .*< embedding_dim=8"),
    (dict(proj_dim=0), r"proj_dim=0 is invalid"),
    (dict(decay=1.0), r"decay=1.0 is invalid: EMA decay must be in \(0, 1\)"),
    (dict(decay=0.0), r"decay=0.0 is invalid"),
    (dict(reparam=True, decay=0.9), r"reparam=True is invalid: SimVQ learns its map .* set decay=null"),
    (dict(random_proj=0), r"random_proj=0 is invalid"),
    (dict(restart_after=0), r"restart_after=0 is invalid"),
    (dict(kmeans_iters=0), r"kmeans_iters=0 is invalid"),
    (dict(penalty_final=-0.1), r"penalty_final=-0.1 is invalid"),
    (dict(penalty_final=0.02), r"penalty_decay_steps=0 is invalid: must be >= 1 when penalty_final is set"),
    (dict(pretrain_steps=-1), r"pretrain_steps=-1 is invalid"),
    (dict(beta=-0.1), r"beta=-0.1 is invalid"),
    (dict(penalty_weight=-1.0), r"penalty_weight=-1.0 is invalid"),
    (dict(penalty_sample_weight=-1.0), r"penalty_sample_weight=-1.0 is invalid"),
    (dict(penalty_temperature=0.0), r"penalty_temperature=0.0 is invalid"),
    (dict(usage_window=0), r"usage_window=0 is invalid"),
    (dict(name="fsq", levels=[1, 16]), r"levels=\[1, 16\] is invalid"),
])
def test_bad_config_gives_one_line_error_naming_the_key(kw, message):
    with pytest.raises(UserError, match=message) as err:
        make(**kw)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("kw", [VQ_CASES["everything"], dict(decay=None, proj_dim=4, restart_after=1),
                                FSQ_CASES["fsq_projected"]], ids=["ema_everything", "loss_factorised", "fsq"])
def test_state_dict_round_trip_keeps_buffers(kw, tmp_path):
    q = make(**kw)
    train_steps(q, 4)
    save_file(q.state_dict(), tmp_path / "q.safetensors")  # the checkpoint format
    torch.manual_seed(123)
    fresh = make(**kw)
    fresh.load_state_dict(load_file(tmp_path / "q.safetensors"), strict=True)
    for name, value in q.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value), name
    assert int(fresh.step) == 4
    if kw.get("decay"):
        assert bool(fresh.initialized) and {"ema_sum", "ema_cluster_size", "born_at"} <= set(q.state_dict())
    q.eval(), fresh.eval()
    z = latents(q, seed=7)
    assert torch.equal(q(z).indices, fresh(z).indices)
    for model in (q, fresh):  # and training resumes identically
        torch.manual_seed(5)
        train_steps(model, 1, seed=20)
    for name, value in q.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[name], value)


@pytest.mark.parametrize("preset", sorted(p.stem for p in (CONFIG_DIR / "tokenizer" / "quantizer").glob("*.yaml")))
def test_every_preset_builds(preset):
    register_configs()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train_tokenizer", overrides=[f"tokenizer/quantizer={preset}"])
    OmegaConf.resolve(cfg)
    q = build_quantizer(to_object(cfg.tokenizer.quantizer))
    z = torch.randn(1, q.cfg.embedding_dim, 2, 2)
    assert q(z).z_q.shape == z.shape


@pytest.mark.parametrize("override,schema", [("tokenizer.quantizer.levels=[4,4]", "VQConfig"),
                                             ("tokenizer/quantizer=fsq tokenizer.quantizer.decay=0.9", "FSQConfig"),
                                             ("tokenizer/quantizer=fsq tokenizer.quantizer.num_codewords=8",
                                              "FSQConfig")])
def test_a_key_of_another_quantizer_fails_at_compose_time(override, schema):
    register_configs()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        with pytest.raises(Exception, match="Could not override") as err:
            compose(config_name="train_tokenizer", overrides=override.split())
    assert f"not in '{schema}'" in str(err.value.__cause__)


def test_keyword_arguments_take_the_config_defaults_and_override_them():
    from vqgpt import FSQ, VectorQuantize

    vq = VectorQuantize(num_codewords=32, embedding_dim=16, cos_dist=True, proj_dim=4, penalty_weight=0.1,
                        init_method="latent_random")
    expected = VQConfig(num_codewords=32, embedding_dim=16, cos_dist=True, proj_dim=4, penalty_weight=0.1,
                        init_method="latent_random")
    assert vq.cfg == expected and vq.cfg.beta == VQConfig().beta
    assert VectorQuantize(VQConfig(num_codewords=8), embedding_dim=4).cfg == VQConfig(num_codewords=8, embedding_dim=4)
    assert FSQ(levels=[3, 3], embedding_dim=4).num_codewords == 9
    with pytest.raises(TypeError, match="levels"):
        VectorQuantize(levels=[3, 3])
    with pytest.raises(UserError, match=r"proj_dim=16 is invalid"):
        VectorQuantize(embedding_dim=16, proj_dim=16)


# --- distributed: 2 gloo processes on CPU

DIST_CASES = {
    "ema": dict(decay=0.9),
    "synced": dict(decay=0.9, init_method="kmeans", restart_after=1, penalty_weight=0.1, cos_dist=True, proj_dim=4),
}


def _dist_batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(4, D, 3, 3, generator=g) for _ in range(4)]


def _dist_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        for name, kw in DIST_CASES.items():
            torch.manual_seed(0)  # the same initial codebook on every rank
            q = make(**kw).train()
            torch.manual_seed(1 + rank)  # rank-specific randomness from here on must not reach the codebook
            for z in _dist_batches():
                q(z.chunk(world)[rank])  # each rank sees half of every batch
            torch.save(q.state_dict(), f"{out_dir}/{name}_{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_keep_identical_codebooks_and_ema_equals_one_big_batch(tmp_path):
    mp.spawn(_dist_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for name in DIST_CASES:
        rank0, rank1 = (torch.load(tmp_path / f"{name}_{r}.pt") for r in range(2))
        for key in rank0:
            assert torch.equal(rank0[key], rank1[key]), f"{name}: {key} differs between ranks"
    assert int(torch.load(tmp_path / "synced_0.pt")["born_at"].max()) > 0  # restarts did happen
    torch.manual_seed(0)
    single = make(**DIST_CASES["ema"]).train()
    for z in _dist_batches():
        single(z)
    rank0 = torch.load(tmp_path / "ema_0.pt")
    for key, value in single.state_dict().items():
        torch.testing.assert_close(rank0[key], value, msg=key)


def test_a_library_call_gets_a_value_error_naming_its_own_argument():
    """Regression: VectorQuantize(num_codewords=0) raised command-line advice (`tokenizer.quantizer.num_codewords`)."""
    from vqgpt import FSQ, VectorQuantize
    from vqgpt.config import VQConfig, VQGANConfig
    from vqgpt.tokenizers.vqgan.model import VQGAN

    with pytest.raises(ValueError, match=r"^num_codewords=0 is invalid: need at least 1 codeword$"):
        VectorQuantize(num_codewords=0)
    with pytest.raises(ValueError, match=r"^levels=\[1, 4\] is invalid"):
        FSQ(levels=[1, 4])
    with pytest.raises(ValueError, match=r"^quantizer\.num_codewords=0 is invalid"):  # the key in VQGANConfig
        VQGAN(VQGANConfig(in_channels=1, image_size=8, quantizer=VQConfig(num_codewords=0)))


@pytest.mark.parametrize(("override", "line"), [
    ("tokenizer.quantizer.num_codewords=0", r"^tokenizer\.quantizer\.num_codewords=0 is invalid"),
    ("tokenizer.channels=0", r"^tokenizer\.channels=0 must be a positive integer"),
    ("tokenizer.loss.rec_loss=l3", r"^tokenizer\.loss\.rec_loss='l3' is unknown"),
    ("tokenizer.loss.disc_layers=9", r"^tokenizer\.loss\.disc_layers=9 is too deep .* tokenizer\.loss\.disc_layers="),
])
def test_the_command_line_names_the_config_key(tmp_path, override, line):
    from conftest import TINY_TOKENIZER, compose_run

    from vqgpt.train.engine import Engine
    from vqgpt.train.tokenizer import VQGANTask

    run = compose_run("train_tokenizer", *TINY_TOKENIZER, override)
    engine = Engine(run.trainer, tmp_path, {}, run.logger, resume=None)
    with pytest.raises(UserError, match=line):
        VQGANTask(run, engine)


@pytest.mark.parametrize("kw", [dict(), dict(cos_dist=True, proj_dim=4), dict(name="fsq", levels=[4, 4])],
                         ids=["vq", "cosine", "fsq"])
def test_sequences_b_n_d_are_quantized_like_grids(kw):
    """Regression: only (B, D, H, W) worked; (B, N, D) died in einops (vector-quantize-pytorch takes it)."""
    torch.manual_seed(0)
    q = make(**kw).eval()
    z = torch.randn(2, 10, q.cfg.embedding_dim)  # (B, N, D)
    out = q(z)
    grid = q(rearrange(z, "b n d -> b d n 1"))
    assert out.z_q.shape == z.shape and out.indices.shape == (2, 10)
    assert torch.equal(out.indices, grid.indices[..., 0])
    assert torch.equal(q.quantize(z), out.indices)
    torch.testing.assert_close(q.dequantize(out.indices), out.z_q)
    with pytest.raises(ValueError, match=r"takes latents \(B, D, H, W\) or \(B, N, D\)"):
        q(z[0, 0])


def test_a_collapsed_codebook_is_warned_about_once():
    """Regression: VectorQuantize() collapsed (1.6 % of codes in use) without a word."""
    torch.manual_seed(0)
    vq = make(num_codewords=256, usage_window=20)
    with pytest.warns(UserWarning, match=r"only \d\.\d% of the 256 codes were used in the last 20 steps .* cos_dist"):
        for _ in range(25):
            vq(torch.randn(16, D, 8, 8) * 0.1 + 1.0)
    healthy = make(num_codewords=256, usage_window=20, cos_dist=True, proj_dim=4, init_method="latent_random",
                   penalty_weight=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(25):
            healthy(torch.randn(16, D, 8, 8))

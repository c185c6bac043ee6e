"""GPT and sampling: invariants on tiny models (2 layers, 32 wide, vocab 17, 12 tokens per image)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import sharpened

from vqgpt.checkpoint import load_model, save_checkpoint
from vqgpt.config import GPTConfig
from vqgpt.errors import UserError
from vqgpt.generate.sampling import (
    check_sampling_args,
    filter_logits,
    generate,
    generate_nocache,
    resolve_class,
    sample_next,
)
from vqgpt.models.gpt import GPT

VOCAB, BLOCK, CLASSES, BATCH = 17, 12, 3, 4


def tiny_config(**overrides) -> GPTConfig:
    cfg = dict(vocab_size=VOCAB, block_size=BLOCK, num_classes=CLASSES, n_layer=2, n_head=2, n_embd=32)
    return GPTConfig(**{**cfg, **overrides})


def tiny_gpt(seed: int = 0, sharp: bool = True, **overrides) -> GPT:
    """A tiny GPT in eval mode; `sharp`: its weights redrawn larger (conftest.sharpened)."""
    torch.manual_seed(seed)
    model = GPT(tiny_config(**overrides))
    return sharpened(model) if sharp else model.eval()


def tokens(batch: int = BATCH, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, BLOCK), generator=torch.Generator().manual_seed(seed))


LABELS = torch.tensor([0, 1, 2, 1])


# ---------------------------------------------------------------------------------------------------------
# The model


def test_forward_shapes_and_untrained_loss_is_log_vocab():
    model = tiny_gpt(sharp=False)
    x = tokens(8)
    logits, loss = model(x, torch.arange(8) % CLASSES, targets=x)
    assert logits.shape == (8, BLOCK, VOCAB)
    assert loss.item() == pytest.approx(math.log(VOCAB), abs=0.1)
    assert model(x[:, :5], None)[1] is None and model(x[:, :5], None)[0].shape == (8, 5, VOCAB)


@pytest.mark.parametrize("num_classes", [0, CLASSES])
def test_changing_token_t_never_changes_earlier_logits(num_classes):
    model = tiny_gpt(num_classes=num_classes)
    cond = LABELS if num_classes else None
    x = tokens()
    logits = model(x, cond)[0]
    for t in (0, 5, BLOCK - 1):
        y = x.clone()
        y[:, t] = (y[:, t] + 1) % VOCAB
        changed = model(y, cond)[0]
        torch.testing.assert_close(changed[:, :t + 1], logits[:, :t + 1], rtol=0, atol=1e-6)  # t + 1: [cond, ...]
        if t + 1 < BLOCK:
            assert not torch.allclose(changed[:, t + 1:], logits[:, t + 1:])


def cached_logits(model: GPT, x: torch.Tensor, cond: torch.Tensor | None, prefix_len: int) -> torch.Tensor:
    """(B, T, V) logits through prefill(prefix_len tokens) + decode_one for the rest."""
    cache = model.new_cache()
    steps = [model.prefill(cond, x[:, :prefix_len], cache)]
    steps += [model.decode_one(x[:, t], cache) for t in range(prefix_len, BLOCK - 1)]
    return torch.stack(steps, dim=1)[:, -BLOCK + prefix_len:]


@pytest.mark.parametrize("prefix_len", [0, 5])
def test_cache_path_matches_forward_and_is_causal(prefix_len):
    model = tiny_gpt()
    x = tokens()
    full = model(x, LABELS)[0]
    logits = cached_logits(model, x, LABELS, prefix_len)  # predicts positions prefix_len..T-1
    torch.testing.assert_close(logits, full[:, prefix_len:], rtol=0, atol=1e-5)
    t = 8
    y = x.clone()
    y[:, t] = (y[:, t] + 1) % VOCAB
    changed = cached_logits(model, y, LABELS, prefix_len)
    torch.testing.assert_close(changed[:, :t + 1 - prefix_len], logits[:, :t + 1 - prefix_len], rtol=0, atol=0)
    assert not torch.allclose(changed[:, t + 1 - prefix_len:], logits[:, t + 1 - prefix_len:])


@pytest.mark.parametrize("prefix_len", [0, 5])
def test_static_decode_step_equals_decode_one(prefix_len):
    """decode_static (all cache rows read, later ones masked: what torch.compile captures) == decode_one."""
    model = tiny_gpt().eval()
    x = tokens()
    with torch.no_grad():
        expected = cached_logits(model, x, LABELS, prefix_len)
        cache = model.new_cache()
        steps = [model.prefill(LABELS, x[:, :prefix_len], cache)]
        pos = torch.tensor([prefix_len])
        for t in range(prefix_len, BLOCK - 1):
            pos += 1
            steps.append(model.decode_static(x[:, t], pos, cache))
    torch.testing.assert_close(torch.stack(steps, dim=1), expected, rtol=0, atol=1e-5)


def test_static_decode_pads_the_cache_to_a_multiple_of_8_and_masks_the_padding():
    """A 7x7 grid's 49 positions: the cache holds 56 rows (aligned for the fused CUDA kernels), the 7 extra
    ones never change a prediction."""
    model = tiny_gpt(block_size=49).eval()
    x = torch.randint(0, VOCAB, (2, 49), generator=torch.Generator().manual_seed(1))
    labels = LABELS[:2]
    with torch.no_grad():
        full = model(x, labels)[0]  # (B, 49, V): the prediction of every position
        cache = model.new_cache()
        steps = [model.prefill(labels, x[:, :0], cache)]
        pos = torch.tensor([0])
        for t in range(48):
            pos += 1
            steps.append(model.decode_static(x[:, t], pos, cache))
    assert {c.max_len for c in cache} == {56} and cache[0].k.shape[2] == 56
    assert cache[0].k[:, :, 49:].abs().sum() == 0  # never written
    torch.testing.assert_close(torch.stack(steps, dim=1), full, rtol=0, atol=1e-5)


def test_label_dropout_uses_null_class_at_its_rate_in_training_only():
    model = GPT(tiny_config(class_dropout=0.25))
    labels = torch.randint(0, CLASSES, (20000,))
    model.train()
    torch.manual_seed(0)
    index = model.cond_index(labels, len(labels))
    dropped = index == model.null_class
    assert model.null_class == CLASSES
    assert dropped.float().mean().item() == pytest.approx(0.25, abs=0.02)
    assert torch.equal(index[~dropped], labels[~dropped])
    model.eval()
    assert torch.equal(model.cond_index(labels, len(labels)), labels)
    assert (model.cond_index(None, 3) == CLASSES).all()


def test_unconditional_model_has_one_start_token_and_refuses_labels():
    model = tiny_gpt(num_classes=0)
    assert model.transformer.wce.weight.shape == (1, 32)
    with pytest.raises(ValueError, match="unconditional"):
        model(tokens(), LABELS)


@pytest.mark.parametrize("tie", [True, False])
def test_weight_tying_shares_storage(tie):
    model = GPT(tiny_config(tie_weights=tie))
    shared = model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    assert shared == tie
    assert (model.lm_head.weight is model.transformer.wte.weight) == tie


@pytest.mark.parametrize("overrides,match", [
    (dict(vocab_size=0), "^vocab_size=0: set it from the tokenizer"),
    (dict(block_size=0), "^block_size=0: set it from the tokenizer"),
    (dict(n_embd=30, n_head=4), "^n_embd=30 is not divisible by n_head=4"),
    (dict(n_layer=0), "^n_layer=0 must be a positive integer"),
    (dict(num_classes=-1), "^num_classes=-1 must be >= 0"),
    (dict(dropout=1.0), r"^dropout=1.0 must be in \[0, 1\)"),
    (dict(class_dropout=-0.1), r"^class_dropout=-0.1 must be in \[0, 1\)"),
])
def test_invalid_config_is_refused(overrides, match):
    with pytest.raises(UserError, match=match):
        GPT(tiny_config(**overrides))


@pytest.mark.parametrize("tie", [True, False])
def test_checkpoint_round_trip_rebuilds_identical_model(tmp_path, tie):
    model = tiny_gpt(tie_weights=tie, bias=True)
    meta = dict(dataset="patterns", image_size=16, channels=3, num_classes=CLASSES, class_names=["a", "b", "c"],
                vocab_size=VOCAB, block_size=BLOCK)
    save_checkpoint(tmp_path / "gpt", model, stage="gpt", arch="gpt", meta=meta, step=7)
    loaded = load_model(tmp_path / "gpt", expected_stage="gpt")
    assert isinstance(loaded, GPT) and loaded.config == model.config
    state, loaded_state = model.state_dict(), loaded.state_dict()
    assert state.keys() == loaded_state.keys()
    assert all(torch.equal(state[k], loaded_state[k]) for k in state)
    assert (loaded.lm_head.weight is loaded.transformer.wte.weight) == tie
    assert torch.equal(generate(loaded, 2, cond=1, seed=0), generate(model, 2, cond=1, seed=0))


# ---------------------------------------------------------------------------------------------------------
# Generation: the KV-cache path against the no-cache oracle


CASES = {
    "unconditional": dict(num_classes=0, kwargs={}),
    "null_class": dict(num_classes=CLASSES, kwargs=dict(cond=CLASSES)),  # model.null_class: unconditional
    "class": dict(num_classes=CLASSES, kwargs=dict(cond=LABELS)),
    "one_class_cfg": dict(num_classes=CLASSES, kwargs=dict(cond=2, cfg_scale=3.0)),
    "cfg_filtered": dict(num_classes=CLASSES, kwargs=dict(cond=LABELS, cfg_scale=1.5, top_k=5, top_p=0.7,
                                                          temperature=0.8)),
    "top_k_top_p": dict(num_classes=0, kwargs=dict(top_k=3, top_p=0.9, temperature=1.3)),
    "prefix": dict(num_classes=CLASSES, kwargs=dict(cond=LABELS, prefix=tokens()[:, :6], top_k=8)),
    "prefix_cfg": dict(num_classes=CLASSES, kwargs=dict(cond=LABELS, prefix=tokens()[:, :1], cfg_scale=2.0)),
}


@pytest.mark.parametrize("case", CASES)
def test_cached_generation_equals_nocache_token_for_token(case):
    model = tiny_gpt(num_classes=CASES[case]["num_classes"])
    kwargs = CASES[case]["kwargs"]
    seen_cached, seen_plain = [], []
    cached = generate(model, BATCH, seed=3, callback=lambda t, x, lg: seen_cached.append((t, x.clone(), lg)),
                      **kwargs)
    plain = generate_nocache(model, BATCH, seed=3, callback=lambda t, x, lg: seen_plain.append((t, x.clone(), lg)),
                             **kwargs)
    assert torch.equal(cached, plain)
    assert torch.equal(generate(model, BATCH, seed=3, use_cache=False, **kwargs), plain)
    assert cached.shape == (BATCH, BLOCK) and cached.dtype == torch.long
    assert 0 <= cached.min() and cached.max() < VOCAB
    start = kwargs["prefix"].size(1) if "prefix" in kwargs else 0
    if start:
        assert torch.equal(cached[:, :start], kwargs["prefix"])
    # The callback: once per new token, with the tokens so far and the (B, V) logits it was drawn from.
    assert [t for t, _, _ in seen_cached] == list(range(start, BLOCK))
    for (t, so_far, logits), (_, _, plain_logits) in zip(seen_cached, seen_plain, strict=True):
        assert torch.equal(so_far, cached[:, :t + 1]) and logits.shape == (BATCH, VOCAB)
        torch.testing.assert_close(logits, plain_logits, rtol=0, atol=1e-4)


@pytest.mark.slow  # torch.compile: ~20 s of compiling on 2 CPU cores
def test_compiled_generation_equals_eager_within_tolerance():
    model = tiny_gpt(num_classes=CLASSES)
    kwargs = dict(cond=LABELS, cfg_scale=1.5, top_k=5, prefix=tokens()[:, :3])
    seen_eager, seen_compiled = [], []
    eager = generate(model, BATCH, seed=3, callback=lambda t, x, lg: seen_eager.append(lg), **kwargs)
    compiled = generate(model, BATCH, seed=3, compile=True, callback=lambda t, x, lg: seen_compiled.append(lg),
                        **kwargs)
    assert torch.equal(compiled, eager)
    torch.testing.assert_close(torch.stack(seen_compiled), torch.stack(seen_eager), rtol=0, atol=1e-4)
    again = generate(model, BATCH, seed=4, compile=True, **kwargs)  # reuses the compiled step
    assert torch.equal(again, generate(model, BATCH, seed=4, **kwargs))


def test_generation_changes_token_frequencies_with_options():
    """A guard against the oracle test passing on an option both paths ignore."""
    model = tiny_gpt()
    base = generate(model, 64, cond=0, seed=0)
    assert not torch.equal(generate(model, 64, cond=1, seed=0), base)
    assert not torch.equal(generate(model, 64, cond=0, cfg_scale=4.0, seed=0), base)
    assert generate(model, 64, cond=0, top_k=2, seed=0)[:, 0].unique().numel() <= 2


def test_seed_determinism_and_generator_isolation():
    model = tiny_gpt()
    a = generate(model, BATCH, cond=LABELS, seed=0)
    torch.manual_seed(123)  # the global RNG does not matter when a seed is given
    assert torch.equal(generate(model, BATCH, cond=LABELS, seed=0), a)
    assert not torch.equal(generate(model, BATCH, cond=LABELS, seed=1), a)


def test_num_samples_sets_the_batch_and_generate_restores_training_mode():
    model = tiny_gpt()
    model.train()
    assert generate(model, 5, cond=1, seed=0).shape == (5, BLOCK)
    assert model.training


@pytest.mark.parametrize("scale,matches", [(0.0, "uncond"), (1.0, "cond")])
def test_cfg_scale_endpoints(scale, matches):
    """s = 0 gives the unconditional (null class) logits, s = 1 the plain conditional ones."""
    model = tiny_gpt()
    guided, reference = [], []
    tokens_guided = generate(model, BATCH, cond=LABELS, cfg_scale=scale, seed=5,
                             callback=lambda t, x, lg: guided.append(lg))
    cond = model.null_class if matches == "uncond" else LABELS
    tokens_reference = generate(model, BATCH, cond=cond, seed=5, callback=lambda t, x, lg: reference.append(lg))
    assert torch.equal(tokens_guided, tokens_reference)
    torch.testing.assert_close(torch.stack(guided), torch.stack(reference), rtol=0, atol=1e-5)


def test_small_temperature_approaches_greedy():
    model = tiny_gpt()
    x = generate(model, BATCH, cond=LABELS, temperature=1e-4, seed=0)
    assert torch.equal(generate(model, BATCH, cond=LABELS, temperature=1e-4, seed=1), x)
    greedy = model(x, LABELS)[0].argmax(-1)  # each token is the argmax given the ones before it
    assert torch.equal(x, greedy)


# ---------------------------------------------------------------------------------------------------------
# Pure sampling helpers


def random_logits(seed: int = 0) -> torch.Tensor:
    return torch.randn(64, VOCAB, generator=torch.Generator().manual_seed(seed)) * 2


@pytest.mark.parametrize("k", [1, 4, VOCAB])
def test_top_k_keeps_exactly_k_largest(k):
    logits = random_logits()
    filtered = filter_logits(logits, top_k=k)
    kept = filtered.isfinite()
    assert (kept.sum(-1) == k).all()
    assert torch.equal(filtered[kept], logits[kept])
    smallest_kept = logits.masked_fill(~kept, math.inf).min(-1).values
    largest_dropped = logits.masked_fill(kept, -math.inf).max(-1).values
    assert (smallest_kept > largest_dropped).all()


@pytest.mark.parametrize("p", [0.05, 0.5, 0.9, 0.999])
def test_top_p_keeps_the_minimal_nucleus(p):
    logits = random_logits(1)
    probs = logits.softmax(-1)
    kept = filter_logits(logits, top_p=p).isfinite()
    kept_mass = (probs * kept).sum(-1)
    smallest_kept = probs.masked_fill(~kept, math.inf).min(-1).values
    largest_dropped = probs.masked_fill(kept, -math.inf).max(-1).values
    assert (smallest_kept > largest_dropped).all()  # the most likely tokens
    assert (kept_mass >= p - 1e-6).all()  # reach p
    assert (kept_mass - smallest_kept < p).all()  # and one fewer would not


def test_top_p_one_and_none_keep_everything():
    logits = random_logits()
    logits[:, 0] = 100.0  # the other tokens' probabilities round to 0
    assert torch.equal(filter_logits(logits, top_p=1.0), logits)
    assert torch.equal(filter_logits(logits), logits)


def test_sample_next_respects_filters_and_temperature():
    logits = random_logits()
    g = torch.Generator().manual_seed(0)
    allowed = filter_logits(logits, top_k=3).isfinite()
    for _ in range(20):
        drawn = sample_next(logits, top_k=3, generator=g)
        assert allowed.gather(1, drawn[:, None]).all()
    assert torch.equal(sample_next(logits, temperature=1e-3, generator=g), logits.argmax(-1))
    hot = torch.stack([sample_next(logits, temperature=100.0, generator=g) for _ in range(10)])
    assert hot.unique().numel() > 10  # nearly uniform


def test_temperature_applies_before_the_nucleus():
    # probs [0.67, 0.24, 0.09] keep two tokens for p = 0.7; at temperature 0.5, [0.87, 0.12, 0.02] keep one.
    logits = torch.tensor([[2.0, 1.0, 0.0]]).expand(200, 3)
    g = torch.Generator().manual_seed(0)
    assert sample_next(logits, top_p=0.7, generator=g).unique().tolist() == [0, 1]
    assert sample_next(logits, temperature=0.5, top_p=0.7, generator=g).unique().tolist() == [0]


@pytest.mark.parametrize("kwargs,match", [
    (dict(temperature=0.0), r"^temperature=0.0 is invalid: must be > 0"),
    (dict(temperature=-1.0), r"^temperature=-1.0 is invalid: must be > 0"),
    (dict(temperature=math.nan), r"^temperature=nan is invalid: must be > 0"),
    (dict(top_k=0), rf"^top_k=0 is invalid: must be an integer in 1..{VOCAB}"),
    (dict(top_k=VOCAB + 1), rf"^top_k={VOCAB + 1} is invalid: must be an integer in 1..{VOCAB}"),
    (dict(top_k=2.5), r"^top_k=2.5 is invalid: must be an integer"),
    (dict(top_p=0.0), r"^top_p=0.0 is invalid: must be in \(0, 1\]"),
    (dict(top_p=1.5), r"^top_p=1.5 is invalid: must be in \(0, 1\]"),
    (dict(cfg_scale=-0.5), r"^cfg_scale=-0.5 is invalid: must be >= 0"),
    (dict(cfg_scale=2.0, num_classes=0), r"^cfg_scale=2.0 is invalid: guidance needs a class-conditional GPT"),
])
def test_invalid_sampling_args_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):  # a library call names its argument (sample.py: sampling.*)
        check_sampling_args(VOCAB, **kwargs)


def test_valid_sampling_args_pass():
    check_sampling_args(VOCAB, temperature=0.5, top_k=VOCAB, top_p=1.0, cfg_scale=0.0, num_classes=CLASSES)
    check_sampling_args(VOCAB, cfg_scale=1.5)  # num_classes None: conditioning not known here


@pytest.mark.parametrize("num_classes,kwargs,match", [
    (CLASSES, dict(temperature=0.0), "^temperature=0.0 is invalid"),
    (0, dict(cond=1), "unconditional"),
    (0, dict(cfg_scale=2.0), "guidance needs a class-conditional GPT"),
    (CLASSES, dict(cfg_scale=2.0), "^cond=None is invalid: this GPT is class-conditional"),
    (CLASSES, dict(), r"^cond=None is invalid: .* or model.null_class \(3\) for unconditional samples"),
    (CLASSES, dict(cond=CLASSES + 1), r"out of range; this GPT has classes 0..2"),  # CLASSES is the null class
    (CLASSES, dict(cond=torch.tensor([0, 1])), r"cond has shape \(2,\)"),
    (CLASSES, dict(cond=0, prefix=tokens()[:2, :3]), r"prefix has shape \(2, 3\)"),
    (CLASSES, dict(cond=0, prefix=tokens()), rf"P < {BLOCK}"),
    (CLASSES, dict(cond=0, prefix=tokens()[:, :3] + VOCAB), "another tokenizer"),
])
def test_generate_refuses_bad_requests(num_classes, kwargs, match):
    model = tiny_gpt(num_classes=num_classes)
    for loop in (generate, generate_nocache):
        with pytest.raises(UserError, match=match):
            loop(model, BATCH, **kwargs)
    with pytest.raises(UserError, match="num_samples=0"):
        generate(model, 0)


NAMES = ["T-shirt", "Trouser", "Bag"]


@pytest.mark.parametrize("label,expected", [
    (None, None), (0, 0), (2, 2), ("1", 1), ("bag", 2), ("  TROUSER ", 1), ("T-shirt", 0),
])
def test_resolve_class_by_index_or_name(label, expected):
    assert resolve_class(label, NAMES, CLASSES) == expected


def test_resolve_class_prefers_a_name_over_an_index():
    assert resolve_class("2", ["5", "2", "7"], 3) == 1


@pytest.mark.parametrize("label,names,num_classes,match", [
    (3, NAMES, CLASSES, r"class index 3 is out of range; this GPT has classes 0..2"),
    (-1, NAMES, CLASSES, "class index -1 is out of range"),
    ("shoe", NAMES, CLASSES, r"unknown class 'shoe'; .* one of: T-shirt, Trouser, Bag"),
    ("shoe", None, CLASSES, "the checkpoint has no class names"),
    (1, NAMES, 0, "the GPT is unconditional; set sampling.class_label=null"),
    (1.5, NAMES, CLASSES, "must be an index or a class name"),
])
def test_resolve_class_errors(label, names, num_classes, match):
    with pytest.raises(UserError, match=match):
        resolve_class(label, names, num_classes)

"""Sampling token grids from a GPT: pure logit filters, argument checks, and two generation loops.

    tokens = generate(model, 16, cond=3, top_k=100, cfg_scale=2.0, seed=0)   # (16, T) with a KV cache
    tokens = generate_nocache(model, 16, cond=3, top_k=100, cfg_scale=2.0, seed=0)   # the same tokens

A patch GPT (continuous tokens) goes through the same loops: tokens are then (16, T, D) floats, each drawn by
`model.sample` from its predicted distribution; top_k and top_p (filters of a softmax) do not apply.

`generate_nocache` recomputes the whole sequence for every token (nanoGPT's loop); it stays as the test
oracle for the KV-cache path. Options follow one rule: `None` means off.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vqgpt.device import autocast
from vqgpt.errors import ArgumentError, UserError
from vqgpt.models.heads import linear_guide

# callback(step, tokens_so_far, logits): after token `step` is drawn; tokens_so_far (B, step + 1) is a view
# of the output (read it, don't write it); logits (B, V) are what the token was drawn from, guided but
# before temperature and filtering, so softmax(logits) is the model's prediction for position `step`
# (a patch GPT: its output (B, 2D or D), whose `model.mean` is the predicted patch).
Callback = Callable[[int, torch.Tensor, torch.Tensor], None]


def check_sampling_args(
    vocab_size: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    cfg_scale: float | None = None,
    num_classes: int | None = None,
) -> None:
    """Refuse sampling options that cannot work with an ArgumentError (a ValueError) naming the argument and the
    fix (a config-facing caller prefixes `sampling.`); num_classes None = unknown; vocab_size 0 = a GPT of
    continuous tokens."""
    if vocab_size == 0 and (top_k is not None or top_p is not None):
        raise ArgumentError("top_k" if top_k is not None else "top_p", top_k if top_k is not None else top_p,
                            "top_k and top_p filter a softmax over tokens, and this GPT predicts continuous patches; "
                            "leave both off (null/None); temperature scales its noise")
    if not (isinstance(temperature, numbers.Real) and 0 < temperature < math.inf):
        raise ArgumentError("temperature", temperature, "must be > 0 (1 = the model's distribution, near 0 = nearly "
                            "greedy)")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral)
                              or not 1 <= top_k <= vocab_size):
        raise ArgumentError("top_k", top_k, f"must be an integer in 1..{vocab_size} (the vocabulary size), or "
                            "null/None for off")
    if top_p is not None and not (isinstance(top_p, numbers.Real) and 0 < top_p <= 1):
        raise ArgumentError("top_p", top_p, "must be in (0, 1] (1 keeps every token), or null/None for off")
    if cfg_scale is not None:
        if not (isinstance(cfg_scale, numbers.Real) and 0 <= cfg_scale < math.inf):
            raise ArgumentError("cfg_scale", cfg_scale, "must be >= 0 (0 = unconditional, 1 = conditional, > 1 = "
                                "stronger guidance), or null/None for off")
        if num_classes == 0:
            raise ArgumentError("cfg_scale", cfg_scale, "guidance needs a class-conditional GPT, and this one is "
                                "unconditional (num_classes=0); leave it off (null/None)")


def resolve_class(label: str | int | None, class_names: list[str] | None, num_classes: int) -> int | None:
    """The class index of `label`, given as an index or a (case-insensitive) class name; None stays None."""
    if label is None:
        return None
    if num_classes == 0:
        raise UserError(f"class {label!r} given, but the GPT is unconditional; set sampling.class_label=null")
    if isinstance(label, str):
        text = label.strip().lower()
        names = [name.lower() for name in class_names or []]
        if text in names:  # a name wins over an index: a folder dataset may name its classes "1", "5", ...
            return names.index(text)
        try:
            label = int(text)
        except ValueError:
            known = (f"one of: {', '.join(class_names[:10])}{', ...' if len(class_names) > 10 else ''}"
                     if class_names else "none (the checkpoint has no class names)")
            raise UserError(f"unknown class {label!r}; pass an index 0..{num_classes - 1} or a class name, "
                            f"{known}") from None
    if isinstance(label, bool) or not isinstance(label, numbers.Integral):
        raise UserError(f"class {label!r} must be an index or a class name")
    if not 0 <= label < num_classes:
        raise UserError(f"class index {label} is out of range; this GPT has classes 0..{num_classes - 1}")
    return int(label)


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Logits (..., V) with -inf outside the top_k, then outside the top_p nucleus; None means off."""
    if top_k is not None:  # exactly k survive, ties or not
        values, indices = logits.topk(top_k, dim=-1)
        logits = torch.full_like(logits, -math.inf).scatter(-1, indices, values)
    if top_p is not None and top_p < 1.0:  # p = 1 keeps all, even tokens whose probability rounds to 0
        # Nucleus sampling (Holtzman et al. 2020): the smallest set of most likely tokens whose probability
        # reaches top_p. A token goes when those ranked above it already reach it, so the top one always stays.
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        drop_sorted = probs.cumsum(dim=-1) - probs >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
        logits = logits.masked_fill(drop, -math.inf)
    return logits


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token per row, (B,), drawn from logits (B, V) divided by temperature, then filtered."""
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    probs = F.softmax(filter_logits(logits, top_k, top_p), dim=-1)
    # What torch.multinomial(probs, 1) computes, the same draws from the same generator, minus its validity
    # check, which reads a value back to the host every step (a GPU sync; gpt-fast samples this way too):
    # argmax of p_i / E_i with E_i ~ Exp(1) picks i with probability p_i.
    race = torch.empty_like(probs).exponential_(1, generator=generator)
    return (probs / race).argmax(dim=-1)


# ---------------------------------------------------------------------------------------------------------
# Generation


@dataclass
class _Run:
    """What both loops need, checked: the output buffer and what the model is fed."""

    tokens: torch.Tensor  # (B, T) long (or (B, T, D) float patches): the prefix, then positions still to sample
    start: int  # P, the first position to sample
    cond: torch.Tensor | None  # (B,) labels, or (2B,) [labels; null class] with guidance, or None
    copies: int  # 2 with guidance: the batch runs conditional and unconditional at once
    generator: torch.Generator | None


def _prepare(model: nn.Module, num_samples: int, cond: torch.Tensor | int | None, temperature: float,
             top_k: int | None, top_p: float | None, cfg_scale: float | None, seed: int | None,
             prefix: torch.Tensor | None) -> _Run:
    config = model.config
    check_sampling_args(config.vocab_size, temperature, top_k, top_p, cfg_scale, config.num_classes)
    if isinstance(num_samples, bool) or not isinstance(num_samples, numbers.Integral) or num_samples < 1:
        raise UserError(f"num_samples={num_samples} must be a positive integer")
    device = next(model.parameters()).device
    batch, block_size = int(num_samples), config.block_size
    if cond is None and config.num_classes:  # never the null class by accident
        raise ArgumentError("cond", None, f"this GPT is class-conditional: pass a class index (one, or one per "
                            f"sample), or model.null_class ({model.null_class}) for unconditional samples")
    if cond is not None:
        if config.num_classes == 0:
            raise UserError("this GPT is unconditional (num_classes=0); sample without a class label")
        cond = torch.as_tensor(cond, dtype=torch.long, device=device)
        cond = cond.expand(batch) if cond.ndim == 0 else cond
        if cond.shape != (batch,):
            raise UserError(f"cond has shape {tuple(cond.shape)}; give one class, or one per sample ({batch},)")
        if cond.min() < 0 or cond.max() > config.num_classes or \
                (cond.max() == config.num_classes and cond.max() != model.null_class):
            raise UserError(f"class labels {cond.min().item()}..{cond.max().item()} out of range; "
                            f"this GPT has classes 0..{config.num_classes - 1}")
    if cfg_scale is not None:
        if cond is None:
            raise UserError("sampling.cfg_scale needs class labels to guide towards; pass a class, or set "
                            "sampling.cfg_scale=null")
        cond = torch.cat([cond, torch.full_like(cond, model.null_class)])
    token_shape = () if model.is_discrete else (config.token_dim,)
    tokens = torch.zeros(batch, block_size, *token_shape, dtype=torch.long if model.is_discrete else torch.float,
                         device=device)
    start = 0
    if prefix is not None:
        prefix = torch.as_tensor(prefix, device=device)
        if prefix.shape[2:] != token_shape or prefix.ndim < 2 or prefix.size(0) != batch \
                or prefix.size(1) >= block_size:
            raise UserError(f"prefix has shape {tuple(prefix.shape)}; it must be {(batch, 'P', *token_shape)} "
                            f"with P < {block_size} tokens per image")
        if model.is_discrete and prefix.numel() and (prefix.min() < 0 or prefix.max() >= config.vocab_size):
            raise UserError(f"prefix tokens must be in 0..{config.vocab_size - 1}; were they made by another "
                            "tokenizer?")
        start = prefix.size(1)
        tokens[:, :start] = prefix
    generator = None if seed is None else torch.Generator(device=device).manual_seed(seed)
    return _Run(tokens, start, cond, 2 if cfg_scale is not None else 1, generator)


def _draw(model: nn.Module, out: torch.Tensor, cfg_scale: float | None, temperature: float, top_k: int | None,
          top_p: float | None, generator: torch.Generator | None,
          denoising_steps: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The next token (B,) from logits (B', V), or the next patch (B, D) from a patch GPT's outputs (B', W)
    (B' = 2B with guidance), and the guided logits or outputs (B, ...) it was drawn from (what callbacks get).
    A patch GPT's head guides as it needs to (the diffusion head: inside its denoising loop)."""
    out = out.float()
    if model.is_discrete:
        logits = linear_guide(out, cfg_scale)
        return sample_next(logits, temperature, top_k, top_p, generator), logits
    return model.sample(out, temperature, generator, cfg_scale, denoising_steps), model.guide(out, cfg_scale)


def _repeat(x: torch.Tensor, copies: int) -> torch.Tensor:
    """x stacked `copies` times along the batch (the conditional and unconditional halves of guidance)."""
    return x if copies == 1 else x.repeat(copies, *[1] * (x.dim() - 1))


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Sample without dropout or label dropout, in bf16 on a GPU that computes it natively (flash attention; the
    logits are drawn from in fp32); give a model called mid-training back in its own mode."""
    was_training = model.training
    model.eval()
    try:
        with autocast(next(model.parameters()).device, "auto"):
            yield
    finally:
        model.train(was_training)


def _decode_static(model: nn.Module, token: torch.Tensor, pos: torch.Tensor, cache: list) -> torch.Tensor:
    return model.decode_static(token, pos, cache)


@functools.cache
def _compiled_decode() -> Callable:
    """torch.compile of the static decode step (made on first use: importing the compiler is slow). It
    compiles on its first call, again for another model or batch size (torch._dynamo's recompile limit
    applies), and every later generate() call reuses it."""
    return torch.compile(_decode_static, fullgraph=True, dynamic=False)


@torch.no_grad()
def generate(
    model: nn.Module,
    num_samples: int,
    cond: torch.Tensor | int | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    cfg_scale: float | None = None,
    seed: int | None = None,
    prefix: torch.Tensor | None = None,
    use_cache: bool = True,
    callback: Callback | None = None,
    compile: bool = False,
    denoising_steps: int | None = None,
) -> torch.Tensor:
    """(num_samples, block_size) tokens (patches: (num_samples, block_size, D)), after `prefix` (B, P[, D]) if
    given; KV cache: one prefill, then a token a step.

    cond: one class index or (B,) indices (model.null_class: unconditional samples of a conditional GPT); None
    only for an unconditional GPT.
    cfg_scale: classifier-free guidance, None = off; seed: a torch.Generator of its own, None = global RNG.
    compile: the decode step through torch.compile with static shapes (`model.decode_static`), compiled once
    per model and batch size; it equals the eager step within float tolerance.
    denoising_steps: a patch GPT's diffusion head's DDPM steps per token (None = its default).
    """
    if not model.causal:
        raise ValueError("a masked model (gpt.name=maskgit) decodes in parallel steps: sample it with "
                         "vqgpt.generate.masked.generate_masked")
    if not use_cache:
        return generate_nocache(model, num_samples, cond, temperature, top_k, top_p, cfg_scale, seed, prefix,
                                callback=callback, denoising_steps=denoising_steps)
    run = _prepare(model, num_samples, cond, temperature, top_k, top_p, cfg_scale, seed, prefix)
    tokens, block_size = run.tokens, model.config.block_size
    with _eval_mode(model):
        cache = model.new_cache()
        logits = model.prefill(run.cond, _repeat(tokens[:, :run.start], run.copies), cache)  # (B', V)
        if compile:
            pos = torch.full((1,), run.start, device=tokens.device)  # token t sits at position t + 1
        for t in range(run.start, block_size):
            tokens[:, t], logits = _draw(model, logits, cfg_scale, temperature, top_k, top_p, run.generator,
                                         denoising_steps)  # logits: (B, V) guided
            if callback is not None:
                callback(t, tokens[:, :t + 1], logits)
            if t + 1 < block_size:  # the last token is never fed back
                token = _repeat(tokens[:, t], run.copies)
                if compile:
                    pos += 1
                    logits = _compiled_decode()(model, token, pos, cache)
                else:
                    logits = model.decode_one(token, cache)
    return tokens


@torch.no_grad()
def generate_nocache(
    model: nn.Module,
    num_samples: int,
    cond: torch.Tensor | int | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    cfg_scale: float | None = None,
    seed: int | None = None,
    prefix: torch.Tensor | None = None,
    callback: Callback | None = None,
    denoising_steps: int | None = None,
) -> torch.Tensor:
    """`generate` without a cache, rerunning the whole sequence for every token: the test oracle."""
    run = _prepare(model, num_samples, cond, temperature, top_k, top_p, cfg_scale, seed, prefix)
    tokens = run.tokens
    with _eval_mode(model):
        for t in range(run.start, model.config.block_size):
            # logits[:, t] sees tokens[:, :t] only, so slot t (not sampled yet) is never read.
            logits = model(_repeat(tokens[:, :t + 1], run.copies), run.cond)[0][:, t]  # (B', V)
            tokens[:, t], logits = _draw(model, logits, cfg_scale, temperature, top_k, top_p, run.generator,
                                         denoising_steps)
            if callback is not None:
                callback(t, tokens[:, :t + 1], logits)
    return tokens

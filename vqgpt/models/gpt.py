"""GPT over image tokens: a decoder-only transformer that writes a VQ-GAN's code grid one token at a time.

nanoGPT's `model.py` (Karpathy) with one change of input: the sequence starts with a condition token, a
learned start token (unconditional) or a class token (class-conditional, LlamaGen / Sun et al. 2024), so

    input   [cond, t_0, t_1, ..., t_{T-2}]
    predict [t_0,  t_1, t_2, ..., t_{T-1}]          T = block_size = h * w of the tokenizer's grid

    model = GPT(cfg)                                  # cfg: GPTConfig, vocab/block/classes already filled
    logits, loss = model(tokens, labels, targets=tokens)   # training: logits[:, i] predicts tokens[:, i]
    cache = model.new_cache()                         # sampling (see vqgpt.generate.sampling.generate)
    logits = model.prefill(cond, prefix, cache)       # (B, V): the token after the prefix
    logits = model.decode_one(token, cache)           # (B, V): the token after that
    logits = model.decode_static(token, pos, cache)   # the same with static shapes, for torch.compile
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vqgpt.config import GPTConfig
from vqgpt.errors import UserError
from vqgpt.registry import register_model


def check_gpt_config(cfg: GPTConfig) -> None:
    """Refuse a config the model cannot be built from, naming the key and the fix on one line."""
    for key in ("vocab_size", "block_size"):
        if getattr(cfg, key) < 1:
            raise UserError(f"gpt.{key}={getattr(cfg, key)}: set it from the tokenizer checkpoint before building "
                            "the GPT (train_gpt.py does); it is never typed by hand")
    for key in ("n_layer", "n_head", "n_embd"):
        if getattr(cfg, key) < 1:
            raise UserError(f"gpt.{key}={getattr(cfg, key)} must be a positive integer")
    if cfg.n_embd % cfg.n_head != 0:
        raise UserError(f"gpt.n_embd={cfg.n_embd} is not divisible by gpt.n_head={cfg.n_head}; "
                        "pick n_embd as a multiple of n_head")
    if cfg.num_classes is None or cfg.num_classes < 0:
        raise UserError(f"gpt.num_classes={cfg.num_classes} must be >= 0 (0 = unconditional); train_gpt.py fills "
                        "null from the dataset")
    for key in ("dropout", "class_dropout"):
        if not 0.0 <= getattr(cfg, key) < 1.0:
            raise UserError(f"gpt.{key}={getattr(cfg, key)} must be in [0, 1)")


# ---------------------------------------------------------------------------------------------------------
# Building blocks


class KVCache:
    """One attention layer's keys and values, allocated once for the whole sequence (on the first append).

    Allocating from the first keys gives the cache their batch size, device and dtype (bf16 under autocast).
    Zeros, not empty memory: the static decode step reads every position, the unwritten ones masked out,
    and a masked NaN would still poison the weighted sum.
    """

    def __init__(self, max_len: int):
        self.max_len = max_len
        self.length = 0  # positions filled so far
        self.k: torch.Tensor | None = None  # (B, n_head, max_len, head_dim)
        self.v: torch.Tensor | None = None

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store (B, n_head, L, head_dim) keys/values after the cached ones; return all of them so far."""
        if self.k is None:
            batch, n_head, _, head_dim = k.shape
            self.k = k.new_zeros(batch, n_head, self.max_len, head_dim)
            self.v = v.new_zeros(batch, n_head, self.max_len, head_dim)
        start, end = self.length, self.length + k.size(2)
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; cannot write up to {end}")
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]

    def write(self, pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Static shapes (a compiled decode step): store one position's (B, n_head, 1, head_dim) keys/values
        at `pos`, a 1-element long tensor, in place; return the whole buffers (B, n_head, max_len, head_dim)."""
        self.k.index_copy_(2, pos, k)
        self.v.index_copy_(2, pos, v)
        return self.k, self.v


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention through F.scaled_dot_product_attention (flash kernels on GPU)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, pos: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, L, C) -> (B, L, C). With `pos` and `mask` (GPT.decode_static): one token written at `pos`,
        attending over every cached position where `mask` (1, block_size) is True."""
        batch, length, width = x.shape
        # (B, L, 3C) -> (3, B, nh, L, hd). A view and a permute, not einops: at batch 1 the decode loop is
        # bound by per-op overhead, and this runs once per layer per token (benchmarks/sampling_speed.py).
        q, k, v = self.c_attn(x).view(batch, length, 3, self.n_head, width // self.n_head).permute(2, 0, 3, 1, 4)
        if pos is not None:
            k, v = cache.write(pos, k, v)  # (B, nh, block_size, hd)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            return self.c_proj(y.transpose(1, 2).reshape(batch, length, width))
        if cache is not None:
            k, v = cache.append(k, v)  # (B, nh, cached + L, hd)
        # A call of several tokens always starts at position 0 (forward, prefill), so the mask is the plain
        # lower triangle; a one-token decode attends to every key so far, which needs no mask at all.
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                           is_causal=length > 1)  # (B, nh, L, hd)
        y = y.transpose(1, 2).reshape(batch, length, width)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, pos: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, pos, mask)
        return x + self.mlp(self.ln_2(x))


# ---------------------------------------------------------------------------------------------------------
# The model


@register_model("gpt", GPTConfig)
class GPT(nn.Module):
    """Token embedding + condition token + learned positions -> n_layer blocks -> logits over the codebook."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        check_gpt_config(config)
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),  # image tokens
            # One row per class plus a last "null" row: the unconditional token. It is the start token of an
            # unconditional model (num_classes = 0), and what label dropout and classifier-free guidance feed
            # a conditional one (Ho & Salimans 2022, "Classifier-Free Diffusion Guidance").
            wce=nn.Embedding(config.num_classes + 1, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_weights:  # Press & Wolf 2017, "Using the Output Embedding to Improve Language Models"
            self.lm_head.weight = self.transformer.wte.weight
        self.apply(self._init_weights)
        # GPT-2: scale the residual projections by 1/sqrt(2 * n_layer), as each layer adds two of them.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @property
    def null_class(self) -> int:
        """The condition index meaning "no class": the start token of an unconditional model."""
        return self.config.num_classes

    def cond_index(self, cond: torch.Tensor | None, batch_size: int) -> torch.Tensor:
        """(B,) rows of the condition table: the labels, or the null class where None or dropped in training."""
        device = self.transformer.wce.weight.device
        if cond is None:
            return torch.full((batch_size,), self.null_class, dtype=torch.long, device=device)
        if self.config.num_classes == 0:
            raise ValueError("this GPT is unconditional (num_classes=0); pass cond=None")
        if cond.shape != (batch_size,):
            raise ValueError(f"cond must have shape ({batch_size},), got {tuple(cond.shape)}")
        if self.training and self.config.class_dropout > 0:
            dropped = torch.rand(batch_size, device=cond.device) < self.config.class_dropout
            cond = torch.where(dropped, self.null_class, cond)
        return cond

    def _hidden(self, x: torch.Tensor, start: int, cache: list[KVCache] | None = None) -> torch.Tensor:
        """Embeddings (B, L, C) of positions start..start+L-1 -> final hidden states (B, L, C)."""
        x = self.transformer.drop(x + self.transformer.wpe.weight[start:start + x.size(1)])  # rows = positions
        for i, block in enumerate(self.transformer.h):
            x = block(x, None if cache is None else cache[i])
        return self.transformer.ln_f(x)

    def _sequence(self, cond: torch.Tensor | None, idx: torch.Tensor) -> torch.Tensor:
        """[cond, idx_0, ..., idx_{L-1}] embedded: (B, 1 + L, C)."""
        cond_emb = self.transformer.wce(self.cond_index(cond, idx.size(0)))  # (B, C)
        return torch.cat([cond_emb[:, None], self.transformer.wte(idx)], dim=1)

    def forward(
        self, idx: torch.Tensor, cond: torch.Tensor | None = None, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, L, V), logits[:, i] predicting idx[:, i] from cond and idx[:, :i]; mean CE vs targets."""
        length = idx.size(1)
        if not 1 <= length <= self.config.block_size:
            raise ValueError(f"idx has {length} tokens; the GPT takes 1 to block_size={self.config.block_size}")
        x = self._sequence(cond, idx[:, :-1])  # (B, L, C): the last token predicts nothing inside the block
        logits = self.lm_head(self._hidden(x, start=0))  # (B, L, V)
        loss = None
        if targets is not None:  # nats per token; -1 marks tokens left out of the loss
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1)
        return logits, loss

    def new_cache(self) -> list[KVCache]:
        """An empty KV cache, one per layer, for one sequence of block_size positions per batch row."""
        return [KVCache(self.config.block_size) for _ in range(self.config.n_layer)]

    def prefill(self, cond: torch.Tensor | None, prefix: torch.Tensor, cache: list[KVCache]) -> torch.Tensor:
        """Run [cond, prefix (B, P)] into a fresh cache; return the logits (B, V) of token P."""
        if cache[0].length != 0:
            raise ValueError("prefill needs a fresh cache (model.new_cache())")
        x = self._sequence(cond, prefix)  # (B, 1 + P, C)
        return self.lm_head(self._hidden(x, start=0, cache=cache)[:, -1])

    def decode_one(self, token: torch.Tensor, cache: list[KVCache]) -> torch.Tensor:
        """Append one token (B,) after the cached ones; return the logits (B, V) of the token after it."""
        if cache[0].length >= self.config.block_size:
            raise ValueError(f"the cache is full: all block_size={self.config.block_size} positions are written")
        x = self.transformer.wte(token)[:, None]  # (B, 1, C)
        return self.lm_head(self._hidden(x, start=cache[0].length, cache=cache)[:, -1])

    def decode_static(self, token: torch.Tensor, pos: torch.Tensor, cache: list[KVCache]) -> torch.Tensor:
        """`decode_one` with shapes that never change, so torch.compile builds it once (gpt-fast's decode step):
        `token` (B,) goes in at position `pos`, a 1-element long tensor, and attention reads all block_size
        cache rows with those after `pos` masked. The cache is the one `prefill` filled; the caller advances
        `pos` (in place, no host sync) and nothing here reads or moves `cache.length`. Eval mode only."""
        mask = (torch.arange(self.config.block_size, device=pos.device) <= pos)[None]  # (1, T): written rows
        x = self.transformer.wte(token)[:, None] + self.transformer.wpe(pos)  # (B, 1, C)
        for block, layer_cache in zip(self.transformer.h, cache, strict=True):
            x = block(x, layer_cache, pos, mask)
        return self.lm_head(self.transformer.ln_f(x)[:, -1])

"""The transformer core every image model here shares: blocks, self-attention, the KV cache, and `Transformer`,
the stack with its condition token and learned positions: causal for the raster-order models, bidirectional
for the masked one.

nanoGPT's blocks (Karpathy), with the sequence started by a condition token: a learned start token
(unconditional) or a class token (class-conditional, LlamaGen / Sun et al. 2024). A model on top says only how a
token goes in (`transformer.wte`: an embedding table for indices, a linear map for continuous patches) and what
comes out (`output`: logits over a codebook, or a patch's distribution):

    GPT       (models/gpt.py)        indices of a VQ-GAN or a pixel palette -> softmax over the vocabulary
    PatchGPT  (models/patch_gpt.py)  continuous patch vectors -> the next patch (MSE or a Gaussian)
    MaskGIT   (models/maskgit.py)    indices, some replaced by [MASK] -> softmax at every position (bidirectional)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from vqgpt.config import GPTConfig
from vqgpt.errors import ArgumentError
from vqgpt.models.heads import HEADS

ORDERS = ("gpt", "maskgit")  # gpt.name: raster order (models/gpt.py, models/patch_gpt.py) or masked (models/maskgit.py)
SCHEDULES = ("cosine", "linear", "square")  # a masked model's share of masked tokens (models/maskgit.py)


def check_gpt_config(cfg: GPTConfig) -> None:
    """Refuse a config the model cannot be built from, naming the key and the fix on one line (an ArgumentError:
    train_gpt.py prefixes `gpt.`)."""
    def bad(message: str) -> ArgumentError:
        return ArgumentError("", message=message)

    fill = "set it from the tokenizer checkpoint before building the GPT (train_gpt.py does); it is never typed by hand"
    if cfg.block_size < 1:
        raise bad(f"§block_size={cfg.block_size}: {fill}")
    if cfg.vocab_size < 1 and cfg.token_dim < 1:
        key = "vocab_size" if cfg.vocab_size < 1 and cfg.token_dim == 0 else "token_dim"
        raise bad(f"§{key}={getattr(cfg, key)}: {fill}")
    if cfg.vocab_size > 0 and cfg.token_dim != 0:
        raise bad(f"§vocab_size={cfg.vocab_size} and §token_dim={cfg.token_dim}: a GPT reads index tokens "
                  "(vocab_size) or continuous ones (token_dim), never both")
    for key in ("n_layer", "n_head", "n_embd"):
        if getattr(cfg, key) < 1:
            raise bad(f"§{key}={getattr(cfg, key)} must be a positive integer")
    if cfg.n_embd % cfg.n_head != 0:
        raise bad(f"§n_embd={cfg.n_embd} is not divisible by §n_head={cfg.n_head}; pick n_embd as a multiple of "
                  "n_head")
    if cfg.num_classes is None or cfg.num_classes < 0:
        raise bad(f"§num_classes={cfg.num_classes} must be >= 0 (0 = unconditional); train_gpt.py fills null from "
                  "the dataset")
    for key in ("dropout", "class_dropout"):
        if not 0.0 <= getattr(cfg, key) < 1.0:
            raise bad(f"§{key}={getattr(cfg, key)} must be in [0, 1)")
    if cfg.head not in HEADS:
        raise bad(f"§head={cfg.head!r} is not one of {', '.join(HEADS)}")
    for key in ("num_mixtures", "diffusion_width", "diffusion_depth", "diffusion_batch_mul"):
        if getattr(cfg, key) < 1:
            raise bad(f"§{key}={getattr(cfg, key)} must be a positive integer")
    if cfg.diffusion_width % 2:
        raise bad(f"§diffusion_width={cfg.diffusion_width} must be even (half sines, half cosines of the noise level)")
    if cfg.name not in ORDERS:
        raise bad(f"§name={cfg.name!r} is not one of {', '.join(ORDERS)} (raster order, or masked parallel decoding)")
    if cfg.name == "maskgit" and cfg.vocab_size < 1:
        raise bad("§name=maskgit predicts masked index tokens, and this tokenizer makes continuous ones; use a VQ "
                  "tokenizer, or gpt.name=gpt")
    if cfg.mask_schedule not in SCHEDULES:
        raise bad(f"§mask_schedule={cfg.mask_schedule!r} is not one of {', '.join(SCHEDULES)}")

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


class SelfAttention(nn.Module):
    """Multi-head self-attention through F.scaled_dot_product_attention (flash kernels on GPU), causal unless
    `causal=False` (the masked model, which sees every position)."""

    def __init__(self, config: GPTConfig, causal: bool = True):
        super().__init__()
        self.causal = causal
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
                                           is_causal=self.causal and length > 1)  # (B, nh, L, hd)
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

    def __init__(self, config: GPTConfig, causal: bool = True):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = SelfAttention(config, causal)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, pos: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, pos, mask)
        return x + self.mlp(self.ln_2(x))


# ---------------------------------------------------------------------------------------------------------
# The stack


class Transformer(nn.Module):
    """Token embedding + condition token + learned positions -> n_layer blocks -> final LayerNorm; a subclass
    adds its output layer (`output`) and calls `init_weights()` once it is built.

    causal (GPT, PatchGPT):    input   [cond, x_0, x_1, ..., x_{T-2}]
                               predict [x_0,  x_1, x_2, ..., x_{T-1}]      T = block_size = h * w of the grid
    bidirectional (MaskGIT):   input   [cond, x_0 or [MASK], ..., x_{T-1} or [MASK]]   (T + 1 positions)
                               predict [-,    x_0,           ..., x_{T-1}]
    """

    def __init__(self, config: GPTConfig, token_embedding: Callable[[GPTConfig], nn.Module], causal: bool = True):
        """`token_embedding(config)` builds how a token goes in; it runs after the config is checked."""
        super().__init__()
        check_gpt_config(config)
        self.config = config
        self.causal = causal
        self.transformer = nn.ModuleDict(dict(
            wte=token_embedding(config),  # image tokens
            # One row per class plus a last "null" row: the unconditional token. It is the start token of an
            # unconditional model (num_classes = 0), and what label dropout and classifier-free guidance feed
            # a conditional one (Ho & Salimans 2022, "Classifier-Free Diffusion Guidance").
            wce=nn.Embedding(config.num_classes + 1, config.n_embd),
            wpe=nn.Embedding(config.block_size + (0 if causal else 1), config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config, causal) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))

    def output(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final hidden states (..., C) -> what the model predicts of the next token (logits, or a patch's
        distribution)."""
        raise NotImplementedError

    def loss(self, out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The training loss of outputs (B, L, ...) against the tokens they predict (B, L[, D])."""
        raise NotImplementedError

    def forward(self, tokens: torch.Tensor, cond: torch.Tensor | None = None,
                targets: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Outputs (B, L, ...), out[:, i] predicting tokens[:, i] from cond and tokens[:, :i]; the loss vs targets."""
        if not 1 <= tokens.size(1) <= self.config.block_size:
            raise ValueError(f"the input has {tokens.size(1)} tokens; the GPT takes 1 to "
                             f"block_size={self.config.block_size}")
        x = self.embed_sequence(cond, tokens[:, :-1])  # (B, L, C): the last token predicts nothing inside the block
        out = self.output(self.hidden_states(x))
        return out, None if targets is None else self.loss(out, targets)

    def init_weights(self) -> None:
        """GPT-2's initialisation: N(0, 0.02), residual projections scaled by 1/sqrt(2 * n_layer) (each layer adds
        two of them)."""
        self.apply(self._init_module)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * self.config.n_layer))

    @staticmethod
    def _init_module(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @property
    def is_discrete(self) -> bool:
        """True for index tokens (a softmax over vocab_size), False for continuous ones (token_dim wide)."""
        return self.config.vocab_size > 0

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

    def hidden_states(self, x: torch.Tensor, start: int = 0, cache: list[KVCache] | None = None,
                      layers: list[int] | None = None) -> torch.Tensor | list[torch.Tensor]:
        """Embeddings (B, L, C) of positions start..start+L-1 -> final hidden states (B, L, C); with `layers`,
        the outputs of those blocks instead (0 = the embeddings, n_layer = the last block, before ln_f)."""
        x = self.transformer.drop(x + self.transformer.wpe.weight[start:start + x.size(1)])  # rows = positions
        kept = [x] if layers is not None and 0 in layers else []
        for i, block in enumerate(self.transformer.h):
            x = block(x, None if cache is None else cache[i])
            if layers is not None and i + 1 in layers:
                kept.append(x)
        return kept if layers is not None else self.transformer.ln_f(x)

    def feature_input(self, tokens: torch.Tensor) -> torch.Tensor:
        """What the model reads of whole token grids (B, T[, D]) with no class, embedded (the linear probe's input):
        a causal model every token but the last (it predicts nothing inside the block), a masked one all of them."""
        return self.embed_sequence(None, tokens[:, :-1] if self.causal else tokens)

    def embed_sequence(self, cond: torch.Tensor | None, tokens: torch.Tensor) -> torch.Tensor:
        """[cond, tokens_0, ..., tokens_{L-1}] embedded: (B, 1 + L, C)."""
        cond_emb = self.transformer.wce(self.cond_index(cond, tokens.size(0)))  # (B, C)
        return torch.cat([cond_emb[:, None], self.transformer.wte(tokens)], dim=1)

    def new_cache(self) -> list[KVCache]:
        """An empty KV cache, one per layer, for one sequence of block_size positions per batch row.

        Its rows are rounded up to a multiple of 8 (the extra ones stay masked): the static decode step's mask
        then has an aligned last dimension, which the fused attention kernels want under Inductor on CUDA (a
        7x7 grid has 49 positions)."""
        rows = -(-self.config.block_size // 8) * 8
        return [KVCache(rows) for _ in range(self.config.n_layer)]

    def prefill(self, cond: torch.Tensor | None, prefix: torch.Tensor, cache: list[KVCache]) -> torch.Tensor:
        """Run [cond, prefix (B, P[, D])] into a fresh cache; return the prediction (B, V) of token P."""
        if cache[0].length != 0:
            raise ValueError("prefill needs a fresh cache (model.new_cache())")
        x = self.embed_sequence(cond, prefix)  # (B, 1 + P, C)
        return self.output(self.hidden_states(x, start=0, cache=cache)[:, -1])

    def decode_one(self, token: torch.Tensor, cache: list[KVCache]) -> torch.Tensor:
        """Append one token (B,) (or (B, D)) after the cached ones; return the prediction of the token after it."""
        if cache[0].length >= self.config.block_size:
            raise ValueError(f"the cache is full: all block_size={self.config.block_size} positions are written")
        x = self.transformer.wte(token)[:, None]  # (B, 1, C)
        return self.output(self.hidden_states(x, start=cache[0].length, cache=cache)[:, -1])

    def decode_static(self, token: torch.Tensor, pos: torch.Tensor, cache: list[KVCache]) -> torch.Tensor:
        """`decode_one` with shapes that never change, so torch.compile builds it once (gpt-fast's decode step):
        `token` goes in at position `pos`, a 1-element long tensor, and attention reads all the cache's rows
        with those after `pos` masked. The cache is the one `prefill` filled; the caller advances `pos`
        (in place, no host sync) and nothing here reads or moves `cache.length`. Eval mode only."""
        mask = (torch.arange(cache[0].max_len, device=pos.device) <= pos)[None]  # (1, rows): the written ones
        x = self.transformer.wte(token)[:, None] + self.transformer.wpe(pos)  # (B, 1, C)
        for block, layer_cache in zip(self.transformer.h, cache, strict=True):
            x = block(x, layer_cache, pos, mask)
        return self.output(self.transformer.ln_f(x)[:, -1])

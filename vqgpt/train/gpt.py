"""Stage 2: train a GPT on the token grids of a tokenizer checkpoint, through the Tokenizer interface only.

    results = train_gpt(run, out_dir, config)      # run: TrainGPTRun

The first run tokenizes the dataset once into a token cache (vqgpt/data/token_cache.py); training then reads
only that cache. Writes to out_dir: metrics.jsonl, samples/step_*.png (one row per class), checkpoints/last
(the GPT checkpoint sample.py reads).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from vqgpt import registry
from vqgpt.checkpoint import checkpoint_hash, load_checkpoint, read_meta
from vqgpt.config import DatasetConfig, GPTConfig, TrainGPTRun, dataclass_from_dict
from vqgpt.data.token_cache import TokenDataset, eval_split, prepare_token_cache
from vqgpt.errors import UserError, argument_prefix
from vqgpt.eval.evaluate import balanced_labels, build_fid, sample_fid
from vqgpt.eval.likelihood import loss_metrics, loss_unit, test_loss
from vqgpt.generate.pipeline import RECORDED_SAMPLING, Models, check_decoding_options, class_grid
from vqgpt.generate.sampling import check_sampling_args
from vqgpt.images import save_grid
from vqgpt.models.gpt import GPT
from vqgpt.models.transformer import check_gpt_config
from vqgpt.train.engine import Engine

RUNS = Path("outputs")  # where the scripts put their runs by default (train_tokenizer.py: outputs/train_tokenizer/)


def newest_tokenizer(runs: Path = RUNS) -> str:
    """The most recently written tokenizer checkpoint anywhere under `runs` (relative to the current directory):
    train_tokenizer.py's default run dirs, `make demo`'s outputs/demo/tokenizer, or a hydra.run.dir of yours there."""
    found = []
    for config in runs.glob("**/checkpoints/last/config.json"):
        try:
            read_meta(config.parent, expected_stage="tokenizer")
        except UserError:  # another stage's, or a damaged one: not a candidate
            continue
        found.append(config)
    if not found:
        raise UserError(f"checkpoint_vae is not set and there is no tokenizer checkpoint under {runs.resolve()}/ "
                        "(searched from the current directory); train one first (python scripts/train_tokenizer.py "
                        "dataset=...) or pass checkpoint_vae=<dir>")
    path = str(max(found, key=lambda p: p.stat().st_mtime).parent)
    print(f"checkpoint_vae not set: using the newest tokenizer checkpoint, {path}")
    return path


def gpt_config(run: TrainGPTRun, header: dict, data_classes: int) -> GPTConfig:
    """The GPT's config: vocab and block size from the tokenizer, never from the config files; classes from
    the data unless gpt.num_classes says (0 = unconditional)."""
    h, w = header["grid"]
    num_classes = data_classes if run.gpt.num_classes is None else run.gpt.num_classes
    if run.gpt.num_classes is None and data_classes == 1:  # one class is no condition at all
        num_classes = 0
    if num_classes and num_classes != data_classes:
        raise UserError(f"gpt.num_classes={num_classes} but the data has {data_classes} classes; set it to "
                        f"{data_classes}, to 0 (unconditional), or null (from the data)")
    return dataclasses.replace(run.gpt, vocab_size=header["codebook_size"] or 0, token_dim=header.get("token_dim") or 0,
                               block_size=h * w, num_classes=num_classes)


class GPTTask:
    """Next-token prediction on the token cache: grad_accum micro-batches per step."""

    stage = "gpt"

    def __init__(self, run: TrainGPTRun, engine: Engine):
        t, device = run.trainer, engine.device
        if run.fid_samples < 0 or run.fid_samples == 1:
            raise UserError(f"fid_samples={run.fid_samples}: FID needs at least 2 samples (or 0 for off)")
        if run.fid_every is not None and (run.fid_every <= 0 or run.fid_every % t.eval_every):
            raise UserError(f"fid_every={run.fid_every}: FID-N runs with an evaluation, so it must be a positive "
                            f"multiple of trainer.eval_every={t.eval_every} (or null: at every evaluation)")
        with argument_prefix("sampling."):  # before the token cache is built: a refused run does nothing
            check_decoding_options(run.sampling, masked=run.gpt.name == "maskgit", head=run.gpt.head)
        if run.sampling.quantize is not None:
            raise UserError(f"sampling.quantize={run.sampling.quantize} samples a trained checkpoint (sample.py, "
                            "evaluate.py); training's pictures and FID use the weights being trained: leave it null")
        vae_path = run.checkpoint_vae or newest_tokenizer()
        if engine.resume is not None:  # refuse a resume onto another tokenizer's tokens before tokenizing anything
            trained_on = read_meta(engine.resume, expected_stage="gpt").get("tokenizer_hash")
            if trained_on and trained_on != (ours := checkpoint_hash(vae_path)):
                raise UserError(f"resume={run.resume} was trained on the tokens of another tokenizer (weights "
                                f"{trained_on}), not checkpoint_vae={vae_path} ({ours}); pass the "
                                "tokenizer it was trained with, or drop resume= to start a fresh run")
        # Rank 0 builds the token cache, then the others find it. Its data loaders draw from the global RNG: fork
        # it, so the GPT's initial weights are the same whether the cache was built now or found.
        with engine.main_first(), torch.random.fork_rng(devices=[]):
            cache, header = prepare_token_cache(vae_path, run.dataset, run.cache_dir, run.hflip_copies, device)
        self.tokenizer = load_checkpoint(vae_path, expected_stage="tokenizer", map_location=device).model
        self.eval_split = eval_split(header)  # what training reports on: val when held out, else test
        self.train_set, self.test_set = TokenDataset(cache, "train"), TokenDataset(cache, self.eval_split)
        engine.check_data(self.train_set)
        self.test_loader = DataLoader(self.test_set, batch_size=t.batch_size, num_workers=t.num_workers)
        self.config = gpt_config(run, header, header["data"]["num_classes"])
        self.arch = self.config.name if self.config.vocab_size else "patch_gpt"
        with argument_prefix("gpt."):  # the command line's name for its config
            check_gpt_config(self.config)  # a bad gpt.name is named here, before the registry looks it up
            self.model = registry.lookup(self.arch)[0](self.config).to(device)
        self.conditional = self.config.num_classes > 0
        self.net = engine.prepare(self.model)
        self.modules = {"model": self.model}
        self.optimizers = {"model": engine.adamw(self.model)}
        self.meta = {k: header["data"][k] for k in ("dataset", "image_size", "channels", "num_classes", "class_names")}
        self.meta.update(vocab_size=self.config.vocab_size, block_size=self.config.block_size,
                         latent_grid=header["grid"], tokenizer_hash=header["tokenizer_hash"],
                         hflip_copies=run.hflip_copies,  # which token cache evaluate.py and classify.py open
                         tokenizer_path=str(Path(vae_path).resolve()),
                         # how its grids and FID drew: where sample.py, edit.py and evaluate.py start
                         sampling={k: getattr(run.sampling, k) for k in RECORDED_SAMPLING})
        self.out_dir, self.device, self.batch_size = engine.out_dir, device, t.batch_size
        self.fid_samples, self.fid_config, self.fid = run.fid_samples, run.fid, None
        # done: the steps trained so far; a finished run that is resumed trains none, and evaluates as the end
        self.fid_every, self.max_steps, self.done = run.fid_every, t.max_steps, t.max_steps
        s = self.sampling = run.sampling  # how the sample grids and FID-N draw
        with argument_prefix("sampling."):
            check_sampling_args(self.config.vocab_size, s.temperature, s.top_k, s.top_p, s.cfg_scale,
                                self.config.num_classes)

        self.data_config = header.get("data_config")

    def describe(self) -> str:
        h, w = self.meta["latent_grid"]
        n_params = sum(p.numel() for p in self.model.parameters())
        tokens = f"K={self.config.vocab_size}" if self.model.is_discrete else f"patches of {self.config.token_dim}"
        model = {"gpt": "GPT", "maskgit": "MaskGIT (masked, bidirectional)"}.get(self.arch,
                                                                                f"PatchGPT ({self.config.head} head)")
        return (f"{self.meta['dataset']}: {len(self.train_set)} train / {len(self.test_set)} {self.eval_split} "
                f"token grids of {h}x{w}, {tokens}; {model} {n_params / 1e6:.2f}M params, "
                f"{'class-conditional' if self.conditional else 'unconditional'}")

    def train_step(self, e: Engine, step: int) -> dict[str, Any]:
        self.done = step + 1  # what an evaluation after this step counts (fid_every)
        total = torch.zeros((), device=e.device)
        for tokens, labels in e.micro_batches(self.net):  # the mean over trainer.grad_accum micro-batches
            with e.autocast:
                _, loss = self.net(tokens, labels if self.conditional else None, targets=tokens)
            e.backward(loss / e.t.grad_accum)
            total += loss.detach() / e.t.grad_accum
        e.optimizer_step("model")
        return {"train/loss": total}

    def evaluate(self, model: GPT) -> dict[str, Any]:
        loss = test_loss(model, self.test_loader, self.device, self.conditional)
        dims = self.meta["channels"] * self.meta["image_size"] ** 2
        results: dict[str, Any] = loss_metrics(model, loss, dims)
        every = self.fid_every or 1
        if self.fid_samples and (self.done % every == 0 or self.done >= self.max_steps):
            results.update(self.sample_fid(model))
        return results

    def sample_fid(self, model: GPT) -> dict[str, Any]:
        """FID-N of `fid_samples` class-balanced samples against the test split (what evaluate.py measures)."""
        if self.fid is None:  # the Inception network and the reference statistics, once per run
            data_cfg = dataclass_from_dict(DatasetConfig, self.data_config)
            self.fid = build_fid(self.fid_config, data_cfg, self.device)
        models = Models(self.tokenizer, model, self.meta["class_names"], self.data_config)
        labels = balanced_labels(self.fid_samples, self.config.num_classes)
        out = sample_fid(models, self.fid, labels, self.fid_samples, self.sampling,
                         self.batch_size, desc=f"FID-{self.fid_samples} samples")
        return {"fid": out["fid"], "fid_protocol": out["protocol"]}

    def snapshot(self, model: GPT, step: int) -> Path:
        """A grid of samples, one row per class."""
        images = class_grid(self.tokenizer, model, 8, self.sampling, self.batch_size)
        return save_grid(images, self.out_dir / "samples" / f"step_{step:07d}.png", nrow=8)

    def summary(self, results: dict[str, Any]) -> str:
        fid = f", FID-{self.fid_samples} {results['fid']:.2f}" if "fid" in results else ""
        if (unit := loss_unit(self.model)) is not None:  # a patch GPT's or a masked model's: no bits
            return f"{results['loss']:.4f} ({unit}){fid}"
        return (f"{results['loss']:.4f} nats/token, {results['bits_per_token']:.4f} bits/token (uniform: "
                f"{math.log(self.config.vocab_size):.4f} nats), {results['bits_per_dim']:.4f} bits/dim{fid}")


def train_gpt(run: TrainGPTRun, out_dir: Path, config: dict) -> dict:
    """The whole stage on the engine: token cache, then trainer.max_steps of next-token prediction, evaluated
    and saved."""
    engine = Engine(run.trainer, out_dir, config, run.logger, resume=run.resume)
    return engine.fit(GPTTask(run, engine))

"""`vqgpt.Pipeline`: a tokenizer and a GPT as one object for Python users, shared as a folder or on the Hugging Face
Hub (the diffusers way: `from_pretrained`, `save_pretrained`, `push_to_hub`, and a call that returns images).

    pipe = vqgpt.Pipeline.from_pretrained("outputs/train_gpt/<date>/checkpoints/last")  # or a folder, or a Hub id
    images = pipe(class_labels=["Sneaker", 3], temperature=0.9, top_k=100)              # PIL images
    pipe.save_pretrained("my-fashion-gpt")                                              # tokenizer/ gpt/ README.md
    pipe.push_to_hub("me/my-fashion-gpt")

A saved pipeline is a folder of vqgpt checkpoints (safetensors weights + JSON, never a pickle) and a model card:

    pipeline.json   format version, components, the metrics and commands that made them
    tokenizer/      a tokenizer checkpoint (vqgpt/checkpoint.py)
    gpt/            a GPT checkpoint trained on that tokenizer's tokens
    classifier/     optional: the image classifier behind `accept_n` (classifier rejection)
    README.md       the model card: dataset, metrics with their FID protocol, the commands
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from PIL import Image
from torch import nn

from vqgpt import registry
from vqgpt.checkpoint import CONFIG_FILE, WRITTEN_HERE, Checkpoint, checkpoint_hash, load_checkpoint, save_checkpoint
from vqgpt.config import SamplingOptions
from vqgpt.errors import UserError
from vqgpt.generate.edit import edit_images, mask_region
from vqgpt.generate.pipeline import (
    DECODING_OPTIONS,
    Models,
    as_labels,
    check_classifier,
    check_decoding_options,
    check_pair,
    completion_rows,
    head_of,
    sample_images,
)
from vqgpt.generate.sampling import check_sampling_args
from vqgpt.images import to_model_space, to_pil
from vqgpt.tokenizers import Tokenizer

PIPELINE_FILE = "pipeline.json"
FORMAT_VERSION = 1
COMPONENTS = {"tokenizer": "tokenizer", "gpt": "gpt", "classifier": "classifier"}  # name -> checkpoint stage
OUTPUT_TYPES = ("pil", "pt")
SAMPLING_ARGUMENTS = ("temperature", "top_k", "top_p", "cfg_scale", "seed", "accept_n", *DECODING_OPTIONS)


class Pipeline:
    """A tokenizer and a GPT over its tokens (and optionally a classifier for rejection): class labels in, images
    out, nothing written. Build one with `from_pretrained`, or from models of your own."""

    def __init__(self, tokenizer: Tokenizer, gpt: nn.Module, *, class_names: list[str] | None = None,
                 classifier: nn.Module | None = None, data_config: dict | None = None,
                 card: dict[str, Any] | None = None):
        check_pair(tokenizer, gpt, "tokenizer", "gpt")
        if classifier is not None:
            check_classifier(classifier, tokenizer, gpt, "classifier")
        self.models = Models(tokenizer.eval(), gpt.eval(), class_names, data_config, classifier=classifier)
        self.card = card or {}  # what the model card says: metrics, protocols, commands, per component
        self._records: dict[str, dict] = {}  # each component's config.json, when it was loaded from one

    @property
    def tokenizer(self) -> Tokenizer:
        return self.models.tokenizer

    @property
    def gpt(self) -> nn.Module:
        return self.models.gpt

    @property
    def classifier(self) -> nn.Module | None:
        return self.models.classifier

    @property
    def class_names(self) -> list[str] | None:
        return self.models.class_names

    @property
    def device(self) -> torch.device:
        return next(self.gpt.parameters()).device

    def to(self, device: str | torch.device) -> Pipeline:
        """Move every model to `device`; returns the pipeline."""
        for model in (self.tokenizer, self.gpt, self.classifier):
            if model is not None:
                model.to(device)
        return self

    # ---- images

    @torch.no_grad()
    def __call__(self, class_labels: int | str | Sequence[int | str] | torch.Tensor | None = None, *,
                 num_images: int | None = None, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, cfg_scale: float | None = None, accept_n: int | None = None,
                 seed: int = 0, batch_size: int = 64, output_type: str = "pil",
                 **decoding: Any) -> list[Image.Image] | torch.Tensor:
        """Sample images: one per entry of `class_labels` (indices or class names), or `num_images` of every class
        in turn when it is None (of a class-conditional GPT: num_images defaults to one per class; of an
        unconditional one: 1). `output_type`: "pil" (a list of PIL images) or "pt" ((B, C, H, W) floats in
        [0, 1]). `decoding`: the options of the GPT's order or head (DECODING_OPTIONS: a masked GPT's `steps`,
        `schedule`, `confidence_noise`; the diffusion head's `denoising_steps`). The same arguments and seed give
        the same images."""
        labels = self._labels(class_labels, num_images)
        num = len(labels) if labels is not None else (num_images or 1)
        if num < 1:
            raise ValueError(f"num_images={num_images} must be >= 1")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type={output_type!r} is not one of {', '.join(OUTPUT_TYPES)}")
        if accept_n is not None and accept_n > 1 and self.classifier is None:
            raise ValueError(f"accept_n={accept_n} needs a classifier to score candidates; build the pipeline with "
                             "one (Pipeline(..., classifier=...)), or leave accept_n=None")
        s = self._options(temperature=temperature, top_k=top_k, top_p=top_p, cfg_scale=cfg_scale, seed=seed,
                          accept_n=accept_n, **decoding)
        images = sample_images(self.models, labels, num, s, batch_size)
        return self._output(images, output_type)

    @torch.no_grad()
    def complete(self, images: torch.Tensor | Image.Image | Sequence[Image.Image],
                 class_labels: int | str | Sequence[int | str] | torch.Tensor | None = None, *,
                 num_completions: int = 1, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, cfg_scale: float | None = None, seed: int = 0,
                 output_type: str = "pil", **decoding: Any) -> list[Image.Image] | torch.Tensor:
        """Keep the top half of each image (its first rows of tokens) and sample the rest, `num_completions` times:
        a figure's rows, per image: input with the bottom half grey | completions | original. `images`: PIL,
        uint8 or float in [0, 1] (or [-1, 1]) at the tokenizer's size. `decoding`: as for a call."""
        x = to_model_space(images, self.tokenizer.channels).to(self.device)
        if x.shape[-1] != self.tokenizer.image_size or x.shape[-2] != self.tokenizer.image_size:
            raise ValueError(f"images of {x.shape[-2]}x{x.shape[-1]} px: this tokenizer takes "
                             f"{self.tokenizer.image_size}x{self.tokenizer.image_size}")
        labels = self._labels(class_labels, len(x)) if self.gpt.config.num_classes else None
        if labels is not None and len(labels) != len(x):
            raise ValueError(f"class_labels has {len(labels)} entries for {len(x)} images; give one per image")
        s = self._options(temperature=temperature, top_k=top_k, top_p=top_p, cfg_scale=cfg_scale, seed=seed,
                          **decoding)
        cond = None if labels is None else torch.tensor(labels, device=self.device)
        return self._output(completion_rows(self.models, x, cond, num_completions, s), output_type)

    @torch.no_grad()
    def edit(self, images: torch.Tensor | Image.Image | Sequence[Image.Image],
             region: torch.Tensor | Image.Image, class_labels: int | str | Sequence[int | str] | None = None, *,
             num_variations: int = 1, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, cfg_scale: float | None = None, seed: int = 0,
             output_type: str = "pil", **decoding: Any) -> list[Image.Image] | torch.Tensor:
        """Re-draw a region of each image and keep the rest (docs/masked.md): `num_variations` edits per image,
        image by image. `region`: a bool tensor (H, W) or (B, H, W), or a PIL mask (not black = re-draw), at the
        tokenizer's size. `class_labels`: what to draw the region as; None = unconditionally. `decoding`: as for
        a call."""
        x = to_model_space(images, self.tokenizer.channels).to(self.device)
        size = self.tokenizer.image_size
        if isinstance(region, Image.Image):
            region = mask_region(region)
        region = torch.as_tensor(region, dtype=torch.bool, device=self.device)
        if x.shape[-2:] != (size, size) or region.shape[-2:] != (size, size):
            raise ValueError(f"images of {tuple(x.shape[-2:])} px and a region of {tuple(region.shape[-2:])}: this "
                             f"tokenizer takes {size}x{size}")
        region = region.expand(len(x), -1, -1) if region.ndim == 2 else region
        cond = None
        if self.gpt.config.num_classes:
            labels = [self.gpt.null_class] * len(x) if class_labels is None else self._labels(class_labels, len(x))
            cond = torch.tensor(labels * (len(x) if len(labels) == 1 else 1), device=self.device)
        s = self._options(temperature=temperature, top_k=top_k, top_p=top_p, cfg_scale=cfg_scale, seed=seed,
                          **decoding)
        edited, _ = edit_images(self.models, x, region, cond, num_variations, s)
        return self._output(edited.flatten(0, 1), output_type)

    def _options(self, **kwargs: Any) -> SamplingOptions:
        """SamplingOptions of keyword arguments, checked against this GPT (a ValueError naming the argument)."""
        for key in kwargs:
            if key not in SAMPLING_ARGUMENTS:
                raise TypeError(f"unexpected keyword argument {key!r}; the decoding options are "
                                f"{', '.join(DECODING_OPTIONS)}")
        s = SamplingOptions(**kwargs)
        check_sampling_args(self.gpt.config.vocab_size, s.temperature, s.top_k, s.top_p, s.cfg_scale,
                            self.gpt.config.num_classes)
        check_decoding_options(s, masked=not self.gpt.causal, head=head_of(self.gpt))
        return s

    def _labels(self, class_labels: Any, num_images: int | None) -> list[int] | None:
        """Class indices, one per image; None for an unconditional GPT."""
        num_classes = self.gpt.config.num_classes
        if class_labels is None:
            if not num_classes:
                return None
            return [i % num_classes for i in range(num_images or num_classes)]  # every class in turn
        if not num_classes:
            raise ValueError("this GPT is unconditional (num_classes=0); call it without class_labels")
        try:  # indices or names, one or a sequence: what sample_images reads too
            return as_labels(self.models, class_labels, 1).flatten().tolist()
        except UserError as e:
            raise ValueError(f"class_labels: {e}") from None

    @staticmethod
    def _output(images: torch.Tensor, output_type: str) -> list[Image.Image] | torch.Tensor:
        return to_pil(images) if output_type == "pil" else ((images.float() + 1) / 2).clamp(0, 1)

    # ---- loading

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | os.PathLike, *, device: str | torch.device = "cpu",
                        ema: bool = True, tokenizer: str | os.PathLike | None = None, revision: str | None = None,
                        token: str | None = None) -> Pipeline:
        """A pipeline from a folder `save_pretrained` wrote, a Hub repository id ("user/name": downloaded into the
        Hub's cache, or read from it offline with HF_HUB_OFFLINE=1), or a GPT checkpoint train_gpt.py wrote (its
        tokenizer from the path it records, or `tokenizer=`). `ema`: the GPT's EMA weights when it has them."""
        path = Path(path_or_repo_id).expanduser()
        if not path.exists():
            path = _download(str(path_or_repo_id), revision, token)
        if (path / PIPELINE_FILE).is_file():
            return cls._from_folder(path, device, ema)
        if (path / CONFIG_FILE).is_file():
            return cls._from_checkpoints(path, tokenizer, device, ema)
        raise UserError(f"{path} is neither a saved pipeline (no {PIPELINE_FILE}) nor a GPT checkpoint (no "
                        f"{CONFIG_FILE}); pass a folder Pipeline.save_pretrained wrote, a Hub id, or "
                        "outputs/train_gpt/<run>/checkpoints/last")

    @classmethod
    def _from_folder(cls, path: Path, device: str | torch.device, ema: bool) -> Pipeline:
        index = json.loads((path / PIPELINE_FILE).read_text())
        if not isinstance(index, dict) or index.get("format_version", 0) > FORMAT_VERSION:
            raise UserError(f"{path / PIPELINE_FILE} is not a pipeline index this vqgpt reads (format "
                            f"{index.get('format_version') if isinstance(index, dict) else '?'}); upgrade vqgpt")
        loaded = {name: load_checkpoint(path / sub, expected_stage=COMPONENTS[name], map_location=device,
                                        ema=ema if name == "gpt" else True)
                  for name, sub in index.get("components", {}).items() if sub}
        for name in ("tokenizer", "gpt"):
            if name not in loaded:
                raise UserError(f"{path / PIPELINE_FILE} names no {name}; the folder is incomplete")
        return cls._build(loaded, index.get("card"))

    @classmethod
    def _from_checkpoints(cls, gpt_path: Path, tokenizer_path: str | os.PathLike | None,
                          device: str | torch.device, ema: bool) -> Pipeline:
        gpt = load_checkpoint(gpt_path, expected_stage="gpt", map_location=device, ema=ema)
        recorded = gpt.meta.get("tokenizer_path")
        tokenizer_path = tokenizer_path or recorded
        if not tokenizer_path or not Path(tokenizer_path).exists():
            raise UserError(f"{gpt_path} records its tokenizer at {recorded}, which is not there; pass "
                            "tokenizer=<the tokenizer checkpoint it was trained on>")
        tok = load_checkpoint(tokenizer_path, expected_stage="tokenizer", map_location=device)
        saved = gpt.meta.get("tokenizer_hash")
        if saved and saved != checkpoint_hash(tok.path):
            warnings.warn(f"{gpt_path} was trained on the codes of another tokenizer than {tok.path} (the weights "
                          "differ); samples may be noise", stacklevel=3)
        loaded = {"tokenizer": tok, "gpt": gpt}
        return cls._build(loaded, {name: run_facts(c.path) for name, c in loaded.items()})

    @classmethod
    def _build(cls, loaded: dict[str, Checkpoint], card: dict | None) -> Pipeline:
        tok, gpt, clf = loaded["tokenizer"], loaded["gpt"], loaded.get("classifier")
        pipe = cls(tok.model, gpt.model, class_names=gpt.meta.get("class_names"),
                   classifier=clf.model if clf else None, data_config=tok.meta.get("data_config"), card=card)
        pipe._records = {name: c.meta for name, c in loaded.items()}
        return pipe

    # ---- saving and sharing

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write the pipeline to `directory` (created; an existing pipeline there is replaced, anything else is
        refused): each model as a vqgpt checkpoint, pipeline.json and the model card README.md."""
        directory = Path(directory).expanduser()
        if directory.is_file() or (directory.is_dir() and any(directory.iterdir())
                                   and not (directory / PIPELINE_FILE).is_file()):
            raise UserError(f"{directory} exists and is not a saved pipeline; not writing into it, pick another "
                            "directory")
        directory.mkdir(parents=True, exist_ok=True)
        common = self._common_meta()
        tok_meta = {**common, **self.tokenizer.checkpoint_meta(), **self._kept("tokenizer")}
        if self.models.data_config:
            tok_meta["data_config"] = self.models.data_config
        save_checkpoint(directory / "tokenizer", self.tokenizer, stage="tokenizer", arch=_arch(self.tokenizer),
                        meta=tok_meta, step=self._records.get("tokenizer", {}).get("step", 0))
        h, w = self.tokenizer.latent_grid
        gpt_meta = {**common, **self._kept("gpt"), "vocab_size": self.gpt.config.vocab_size,
                    "block_size": self.gpt.config.block_size, "latent_grid": [h, w],
                    "tokenizer_hash": checkpoint_hash(directory / "tokenizer"),
                    "tokenizer_path": str((directory / "tokenizer").resolve())}
        save_checkpoint(directory / "gpt", self.gpt, stage="gpt", arch=_arch(self.gpt), meta=gpt_meta,
                        step=self._records.get("gpt", {}).get("step", 0))
        components = {"tokenizer": "tokenizer", "gpt": "gpt", "classifier": None}
        if self.classifier is not None:
            save_checkpoint(directory / "classifier", self.classifier, stage="classifier",
                            arch=_arch(self.classifier), meta={**common, **self._kept("classifier")},
                            step=self._records.get("classifier", {}).get("step", 0))
            components["classifier"] = "classifier"
        index = {"format_version": FORMAT_VERSION, "library": "vqgpt", "components": components, "card": self.card}
        (directory / PIPELINE_FILE).write_text(json.dumps(index, indent=2) + "\n")
        (directory / "README.md").write_text(model_card(self, index))
        return directory

    def push_to_hub(self, repo_id: str, *, private: bool = False, token: str | None = None,
                    commit_message: str = "Upload vqgpt pipeline") -> str:
        """save_pretrained into a temporary folder, then upload it to the Hub repository `repo_id` (created if
        missing); returns the commit's URL."""
        from huggingface_hub import HfApi  # the Hub client, only when sharing

        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            folder = self.save_pretrained(Path(tmp) / "pipeline")
            info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message)
        return str(getattr(info, "commit_url", info))

    def _common_meta(self) -> dict[str, Any]:
        """The config.json facts every checkpoint has: the data's name, size, channels and classes."""
        data = self.models.data_config or {}
        names = self.class_names
        return {"dataset": data.get("name", self._records.get("tokenizer", {}).get("dataset", "unknown")),
                "image_size": self.tokenizer.image_size, "channels": self.tokenizer.channels,
                "num_classes": self.gpt.config.num_classes or len(names or []) or 1,
                "class_names": list(names) if names else None}

    def _kept(self, name: str) -> dict[str, Any]:
        """A loaded component's own config.json facts, minus what save_checkpoint writes itself."""
        record = self._records.get(name, {})
        return {k: v for k, v in record.items()
                if k not in (*WRITTEN_HERE, "ema_sha256", "tokenizer_hash", "tokenizer_path")}


def _arch(model: nn.Module) -> str:
    """The registry name of `model`'s class (a model of your own: decorate it with @register_model)."""
    arch = registry.arch_of(model)
    if arch is None:
        raise ValueError(f"{type(model).__name__} is not registered; decorate it with "
                         "@vqgpt.registry.register_model(name, ConfigDataclass) so a checkpoint can rebuild it")
    return arch


def _download(repo_id: str, revision: str | None, token: str | None) -> Path:
    """The Hub repository's files in the Hub's own cache (offline: what the cache holds)."""
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id):
        raise UserError(f"{repo_id} is not a directory here, nor a Hub repository id (user/name); pass one of them")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, revision=revision, token=token))
    except LocalEntryNotFoundError:
        raise UserError(f"{repo_id} is not in the Hugging Face cache and the Hub cannot be reached (offline or "
                        "HF_HUB_OFFLINE=1); download it once online, or pass a local folder") from None
    except HfHubHTTPError as e:
        raise UserError(f"{repo_id}: the Hub refused ({str(e).splitlines()[0]}); check the id, or log in "
                        "(`hf auth login`) for a private repository") from None


def run_facts(checkpoint_dir: Path) -> dict[str, Any]:
    """What a training run's directory says about a checkpoints/last inside it: the command that trained it and
    its eval.json (metrics, each FID with its protocol), for the model card."""
    run_dir = checkpoint_dir.parent.parent
    facts: dict[str, Any] = {}
    hydra = run_dir / ".hydra"
    if (hydra / "overrides.yaml").is_file() and (hydra / "hydra.yaml").is_file():
        overrides = yaml.safe_load((hydra / "overrides.yaml").read_text()) or []
        job = (yaml.safe_load((hydra / "hydra.yaml").read_text()) or {}).get("hydra", {}).get("job", {}).get("name")
        if job:
            facts["command"] = " ".join([f"python scripts/{job}.py", *map(str, overrides)])
    if (run_dir / "eval.json").is_file():
        facts["eval"] = json.loads((run_dir / "eval.json").read_text())
    return facts


def model_card(pipe: Pipeline, index: dict) -> str:
    """README.md of a saved pipeline: the Hub's metadata header, what it is, how to use it, and every fact known
    about how it was made (metrics with their FID protocol record, the commands)."""
    data = pipe.models.data_config or {}
    name = data.get("name", "unknown")
    t, g = pipe.tokenizer, pipe.gpt
    h, w = t.latent_grid
    n_params = sum(p.numel() for p in g.parameters())
    tokens = f"K={t.codebook_size} codes" if t.is_discrete else f"continuous tokens of {t.token_dim} numbers"
    lines = ["---", "library_name: vqgpt", "tags:", "- image-generation", "- autoregressive", "- vqgpt",
             f"datasets:\n- {name}", "---", "", f"# vqgpt pipeline: {name}", "",
             f"A tokenizer ({type(t).__name__}: {t.image_size}x{t.image_size} px, {t.channels} channel(s) -> {h}x{w} "
             f"tokens, {tokens}) and a GPT over its tokens ({n_params / 1e6:.2f}M parameters, "
             + (f"{g.config.num_classes} classes" if g.config.num_classes else "unconditional") + ").", "",
             "```python", "import vqgpt", "", "pipe = vqgpt.Pipeline.from_pretrained(\"<this repository or folder>\")",
             "images = pipe(num_images=8)  # PIL images" + ("" if not g.config.num_classes else
                                                          ", every class in turn"), "```", ""]
    if pipe.class_names:
        lines += ["Classes: " + ", ".join(f"{i} {c}" for i, c in enumerate(pipe.class_names)), ""]
    for component, facts in (pipe.card or {}).items():
        if not facts:
            continue
        lines += [f"## {component}", ""]
        if facts.get("command"):
            lines += ["Trained with:", "", "```bash", facts["command"], "```", ""]
        results = facts.get("eval")
        if results:
            flat = {k: v for k, v in results.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            if flat:
                lines += ["| metric | value |", "|---|---|"] + [f"| {k} | {v:.4g} |" for k, v in flat.items()] + [""]
            protocol = results.get("fid_protocol") or results.get("protocol")
            if protocol:
                lines += ["FID protocol: " + "; ".join(f"{k}: {v}" for k, v in protocol.items()), ""]
    lines += ["Files: `tokenizer/` and `gpt/` are vqgpt checkpoints (safetensors weights + config.json, no pickle)"
              + ("; `classifier/` scores candidates for `accept_n`" if index["components"].get("classifier") else "")
              + ".", ""]
    return "\n".join(lines)


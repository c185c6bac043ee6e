"""Structured configs: the typed schema behind every YAML file in `configs/`.

Hydra lives here and in `scripts/`; the library itself takes these dataclasses (or plain arguments),
never a DictConfig. Each schema is registered in Hydra's ConfigStore, so a misspelt key or a value of
the wrong type fails when the config is composed, with the key named.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import MISSING, DictConfig, OmegaConf

from vqgpt.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
T = TypeVar("T")


@dataclass
class DatasetConfig:
    """Which images to load, and how to bring them to one size and channel count."""

    name: str = MISSING  # key in vqgpt.data.DATASETS: mnist, cifar10, folder, patterns, ...
    root: str | None = None  # looked at first; None = only the well-known places (and download)
    image_size: int = 32  # square side after resizing
    channels: int = 3  # 1 = grayscale, 3 = RGB; images are converted to this
    # labels are 0..num_classes-1; null = the count of class names the data gives (folder: its sub-folders)
    num_classes: int | None = 1
    class_names: list[str] | None = None
    resize: str = "crop"  # crop: resize shorter side then center-crop; pad: center-pad with black
    # null = download a missing dataset into vqgpt's cache if it is under 1 GB (MNIST, CIFAR, SVHN, DTD,
    # MedMNIST at 28/64 px), larger ones (Places365, CelebA) only with true; false = never download
    download: bool | None = None
    skip_corrupt: bool = False  # folder: skip (and count) unreadable images instead of failing
    hflip: bool = False  # random horizontal flips on the training split
    val_size: int = 0  # training images held out as the "val" split (per-class share, fixed draw); 0 = none
    medmnist_size: int | None = None  # 28/64/128/224; None = smallest size >= image_size
    num_train: int = 2048  # patterns: images per split (generated on the fly)
    num_test: int = 512
    seed: int = 0  # patterns: generation seed


# The schemas of each kind by name, as config.json's model_config and the YAML files say it (`name: vq`): every
# subclass below is collected here by its `name` default, so a new implementation is its dataclass alone.
QUANTIZER_CONFIGS: dict[str, type] = {}
TOKENIZER_CONFIGS: dict[str, type] = {}


def _collect(into: dict[str, type], cls: type) -> None:
    name = cls.__dict__.get("name")  # the default of the subclass's own `name` field
    if isinstance(name, str):
        if name in into and into[name].__qualname__ != cls.__qualname__:
            raise ValueError(f"two schemas named {name!r}: {into[name].__qualname__} and {cls.__qualname__}")
        into[name] = cls


@dataclass
class QuantizerConfig:
    """What every quantizer's schema has; each implementation adds its own keys (vqgpt/tokenizers/quantizers)."""

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        _collect(QUANTIZER_CONFIGS, cls)

    name: str = MISSING  # which implementation; each schema fixes it
    embedding_dim: int = 64  # d, the width of the latents being quantized
    usage_window: int = 100  # `usage` = fraction of codes used in the last N steps (also `dead_codes` age)


@dataclass
class VQConfig(QuantizerConfig):
    """Vector quantization (`VectorQuantize`): a codebook searched by nearest neighbour."""

    name: str = "vq"
    num_codewords: int = 1024  # K
    cos_dist: bool = False  # nearest neighbour by cosine similarity (l2-normalised latents and codes)
    proj_dim: int | None = None  # factorised codes: look up in a proj_dim-wide space (< embedding_dim)
    random_proj: int | None = None  # width of a fixed random projection used for the search; None = off
    init_method: str = "random"  # random (normal) | uniform (+-1/K) | latent_random | kmeans
    kmeans_iters: int = 10  # Lloyd iterations for init_method=kmeans
    pretrain_steps: int = 0  # bypass the quantizer for the first N training forwards (autoencoder warm start)
    penalty_weight: float = 0.0  # batch-level codebook-usage (entropy) penalty; 0 = off
    penalty_sample_weight: float = 0.0  # adds this times the mean per-sample entropy (sharpens); 0 = off
    penalty_temperature: float = 1.0  # soft assignment = softmax(-squared distance / temperature)
    penalty_final: float | None = None  # the penalty weight goes linearly to this by penalty_decay_steps; None = fixed
    penalty_decay_steps: int = 0  # training steps of that decay (then it stays at penalty_final)
    beta: float = 0.25  # commitment weight
    decay: float | None = None  # None = codebook learned by the loss; else EMA decay in (0, 1)
    restart_after: int | None = None  # reseed codes unused for this many steps; None = off
    gradient: str = "ste"  # ste (straight-through) | rotation (rotation trick)
    reparam: bool = False  # SimVQ: codes = a frozen random basis through one learned linear map (decay=null)


@dataclass
class FSQConfig(QuantizerConfig):
    """Finite scalar quantization (`FSQ`): K = prod(levels) implicit codes, nothing to learn."""

    name: str = "fsq"
    levels: list[int] = field(default_factory=lambda: [8, 5, 5, 5])  # levels per channel


@dataclass
class KLConfig(QuantizerConfig):
    """Not a quantizer: a KL bottleneck (`KLBottleneck`), so the VQ-GAN makes continuous tokens (the latent
    autoencoders MAR and GIVT model; Rombach et al. 2022's KL-regularised autoencoder)."""

    name: str = "kl"
    kl_weight: float = 1.0e-6  # of KL(q(z|x) || N(0, I)), per latent number; LDM's KL autoencoders use 1e-6
    std_momentum: float = 0.99  # the running std of the latents that tokens are divided by (unit-scale tokens)


@dataclass
class TokenizerLossConfig:
    """VQ-GAN loss weights (reconstruction + perceptual + adversarial + codebook)."""

    rec_loss: str = "l1"  # l1 | l2
    perceptual_weight: float = 1.0
    # LPIPS's trunk in the loss: vgg (taming's) or alex (its linear heads on AlexNet: 1/30 of VGG's cost on a CPU).
    # Evaluation's LPIPS is VGG's either way.
    perceptual_net: str = "vgg"
    lpips_weights: str | None = None  # local LPIPS trunk weights file for offline machines
    codebook_weight: float = 1.0
    disc_weight: float = 0.5  # 0: no GAN (the discriminator is built but never run or trained)
    disc_start: int = 5000  # step at which the discriminator joins (GAN weight 0 before it)
    disc_loss: str = "hinge"  # hinge | non_saturating
    disc_channels: int = 64  # PatchGAN width of its first layer
    disc_layers: int = 3  # PatchGAN stride-2 layers; needs image_size >= 3 * 2 ** disc_layers


@dataclass
class TokenizerConfig:
    """What every tokenizer's schema has; each implementation adds its own keys (vqgpt/tokenizers)."""

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        _collect(TOKENIZER_CONFIGS, cls)

    name: str = MISSING  # which implementation; each schema fixes it
    in_channels: int = 3  # image channels; the YAML sets ${dataset.channels}
    image_size: int = 32  # square side. The YAML sets ${dataset.image_size}


@dataclass
class VQGANConfig(TokenizerConfig):
    """Convolutional VQ-GAN encoder/decoder (taming-transformers family) with a quantizer between."""

    name: str = "vqgan"
    channels: int = 64
    ch_mult: list[int] = field(default_factory=lambda: [1, 2, 2])  # f = 2 ** (len(ch_mult) - 1)
    num_res_blocks: int = 2
    attn_resolutions: list[int] = field(default_factory=list)  # feature-map sides that get self-attention
    dropout: float = 0.0
    z_channels: int = 64  # encoder output width
    double_z: bool = False  # encoder outputs 2 * z_channels (taming's KL option; here it just widens quant_conv)
    embed_dim: int = 64  # width of the quantized latents (quant_conv: z_channels -> embed_dim)
    # Any, not a union: OmegaConf types the node by the schema the group file names (vq_schema, fsq_schema);
    # `choices` tells checkpoint loading which schema a saved `name` stands for.
    quantizer: Any = field(default_factory=VQConfig, metadata={"choices": QUANTIZER_CONFIGS})
    loss: TokenizerLossConfig = field(default_factory=TokenizerLossConfig)


@dataclass
class PixelConfig(TokenizerConfig):
    """Image GPT's tokens (Chen et al. 2020): every pixel is one token, the index of its nearest palette colour."""

    name: str = "pixel"
    # uniform: evenly spaced levels per channel (RGB: num_colors must be a cube, 8 = 2 per channel, 512 = 8) |
    # kmeans: colours fitted to the train split's pixels | auto: uniform for grayscale, kmeans for RGB
    palette: str = "auto"
    num_colors: int | None = None  # K, the GPT's vocabulary; None = 16 for grayscale (4 bits), 512 for RGB (iGPT)
    fit_pixels: int = 200000  # kmeans: pixels drawn from the train split to fit the palette
    kmeans_iters: int = 30  # kmeans: Lloyd iterations


@dataclass
class PatchConfig(TokenizerConfig):
    """Continuous tokens: an image cut into patch_size x patch_size patches, each one vector (PatchGPT)."""

    name: str = "patch"
    patch_size: int = 4  # P: the GPT sees (image_size / P) ** 2 tokens of P * P * channels numbers



@dataclass
class GPTConfig:
    """Decoder-only transformer over token grids; vocab and block size come from the tokenizer."""

    name: str = "gpt"  # gpt: raster order, one token at a time | maskgit: masked, a few parallel steps (index tokens)
    # Facts of the tokenizer, filled by train_gpt.py from its checkpoint before the model is built
    # (0 = not set yet); never typed in a YAML.
    vocab_size: int = 0  # K, the tokenizer's codebook size (0 for continuous tokens)
    token_dim: int = 0  # width of a continuous token (patch_size**2 * channels); 0 for index tokens
    block_size: int = 0  # T = h * w tokens per image: the transformer's context
    # None = the dataset's class count (class-conditional when it has more than one class);
    # 0 = unconditional (a learned start token) even on labelled data; N = one class token per label
    num_classes: int | None = None
    n_layer: int = 6
    n_head: int = 8
    n_embd: int = 256
    dropout: float = 0.0
    bias: bool = False  # biases in Linear layers and LayerNorms (nanoGPT: False is a bit better and faster)
    tie_weights: bool = True  # the output head shares the token embedding matrix (index tokens only)
    class_dropout: float = 0.1  # label dropout, so classifier-free guidance works
    # Continuous tokens only (vqgpt/models/heads.py): gaussian (mean and std per number, NLL) | mse (the mean) |
    # mixture (K Gaussians per token, NLL; GIVT) | diffusion (an MLP denoiser conditioned on each output; MAR)
    head: str = "gaussian"
    num_mixtures: int = 8  # head=mixture: K components
    diffusion_width: int = 256  # head=diffusion: the denoiser's width and residual blocks (MAR: 1024 x 3)
    diffusion_depth: int = 3
    diffusion_batch_mul: int = 4  # head=diffusion: noise draws per token in a training step (MAR's 4)
    mask_schedule: str = "cosine"  # maskgit only: the share of tokens a training step masks (cosine | linear | square)


@dataclass
class ClassifierConfig:
    """Small CNN image classifier (vqgpt/models/image_classifier.py): scores samples for classifier rejection."""

    name: str = "classifier"
    # Facts of the data; the YAML sets them from ${dataset.*}.
    in_channels: int = 3
    image_size: int = 32
    num_classes: int | None = 10  # null = the data's class count (train_classifier.py fills it)
    channels: list[int] = field(default_factory=lambda: [16, 32, 64])  # per level; each later level halves the side
    dropout: float = 0.1  # before the linear head


@dataclass
class GPTClassifierConfig:
    """A GPT (or PatchGPT) with a linear class head on its average-pooled final features: iGPT's fine-tuning."""

    name: str = "gpt_classifier"
    gpt: GPTConfig = field(default_factory=GPTConfig)  # the pretrained GPT's own config
    gpt_arch: str = "gpt"  # gpt | patch_gpt | maskgit: which model `gpt` builds
    num_classes: int = 10


@dataclass
class ProbeConfig:
    """classify.py's linear probe (mode=probe): logistic regression on a GPT's average-pooled block outputs."""

    layers: list[int] | None = None  # blocks to probe (0 = the embeddings, n_layer = the last); None = every one
    train_images: int | None = None  # a random N of the train split (one forward pass each); None = all of it
    test_images: int | None = None  # a random N of the test split; None = all of it
    val_fraction: float = 0.1  # of the probe's train images, held out to pick the layer
    weight_decay: float = 1.0e-4  # L2 penalty of the logistic regression
    max_iter: int = 300  # its L-BFGS iterations


@dataclass
class TrainerConfig:
    """The plain training loop's knobs."""

    max_steps: int = 10000
    batch_size: int = 64  # per process (under torchrun) and per micro-batch
    lr: float = 3e-4
    min_lr: float = 3e-5
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = 0.0
    warmup_steps: int = 500
    grad_clip: float | None = 1.0
    grad_accum: int = 1  # micro-batches per step; the global batch is batch_size x grad_accum x processes
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU | bf16 (also on CPU) | fp32
    compile: bool = False  # torch.compile the trained model(s)
    fused_adamw: bool = True  # fused AdamW kernel on CUDA (CPU uses the foreach path)
    channels_last: bool = False  # channels_last memory format for the convnets (tokenizer, classifier)
    ema_decay: float | None = None  # keep an EMA of the weights (e.g. 0.999), used for eval and sampling
    max_bad_steps: int = 10  # stop after this many non-finite (skipped) steps in a row
    # A held-out number of the evaluation (loss, accuracy, rfid, ...): also keep checkpoints/best, the weights
    # where it was best, judged at every evaluation; None: checkpoints/last only
    keep_best: str | None = None
    early_stop: int = 0  # with keep_best: stop after this many evaluations in a row without a new best; 0 = never
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    num_workers: int = 2
    num_threads: int | None = None  # torch intra-op CPU threads; None = torch's choice (one per core)
    seed: int = 0
    log_every: int = 50
    eval_every: int = 1000
    sample_every: int = 1000
    checkpoint_every: int = 1000
    progress_bar: bool = True


@dataclass
class LoggerConfig:
    """Where metrics go: `none` (console only) or `wandb`."""

    name: str = "none"  # none | wandb
    project: str = "vqgpt"
    entity: str | None = None
    mode: str | None = None  # online | offline | disabled; None = online if an API key is set
    run_name: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class SamplingOptions:
    """How tokens are drawn; None means off. What evaluate.py and training's pictures and FID-N take (they say
    how many images elsewhere)."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    cfg_scale: float | None = None
    seed: int = 0
    class_label: str | None = None  # index or name; None = every class in turn
    accept_n: int | None = None  # classifier rejection: best of N candidates per image; None or 1 = off
    compile: bool = False  # torch.compile the decode step (static KV cache shapes); the first batch compiles
    quantize: str | None = None  # int8: the GPT's Linear layers as dynamic int8 (CPU); None = as trained
    # A masked GPT (gpt.name=maskgit) only; None = its defaults (8, cosine, 4.5)
    steps: int | None = None  # parallel decoding steps
    schedule: str | None = None  # cosine | linear | square: the share still masked after each step
    confidence_noise: float | None = None  # Gumbel noise on the confidence, annealed to 0 (MaskGIT's 4.5)
    # A patch GPT's diffusion head (gpt.head=diffusion) only; None = 50
    denoising_steps: int | None = None  # DDPM steps per token


@dataclass
class SamplingConfig(SamplingOptions):
    """sample.py's sampling: the options, and how many images of each class."""

    num_samples: int = 16


@dataclass
class FIDConfig:
    """FID's options (vqgpt/eval/fid.py); every FID saves the protocol they make with it."""

    reference_split: str = "test"  # the real images' split
    reference_size: int | None = None  # its first N images; None = all of it
    batch_size: int = 100  # images per Inception pass
    inception_score: bool | None = None  # None = on for RGB datasets (IS is an ImageNet-classifier score)
    inception_weights: str | None = None  # your own InceptionV3 file; None = the weights helper finds it
    inception_logits_weights: str | None = None  # IS's classifier head; None = found or downloaded


@dataclass
class EvaluateFIDConfig(FIDConfig):
    """evaluate.py's FID: the options, and how many samples (class-balanced when conditional)."""

    num_samples: int = 10000


@dataclass
class TrainTokenizerRun:
    """`scripts/train_tokenizer.py`."""

    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    tokenizer: Any = field(default_factory=VQGANConfig, metadata={"choices": TOKENIZER_CONFIGS})
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    out_dir: str = "."  # relative paths land in Hydra's run dir
    resume: str | None = None  # true: this run dir's last checkpoint; <dir>: that checkpoint; null: fresh


@dataclass
class TrainGPTRun:
    """`scripts/train_gpt.py`."""

    checkpoint_vae: str | None = None  # the tokenizer checkpoint whose codes the GPT learns
    dataset: DatasetConfig | None = None  # None = the data config stored in the tokenizer checkpoint
    gpt: GPTConfig = field(default_factory=GPTConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    sampling: SamplingOptions = field(default_factory=SamplingOptions)  # the sample grids' and FID-N's draws
    cache_dir: str | None = None  # token cache; None = next to the tokenizer checkpoint
    hflip_copies: bool = False  # also cache horizontally flipped training images (doubles the train split)
    fid_samples: int = 0  # log val/fid of this many samples every trainer.eval_every steps; 0 = off
    fid_every: int | None = None  # FID-N only every this many steps (a multiple of eval_every) and at the end
    fid: FIDConfig = field(default_factory=FIDConfig)  # its protocol options
    out_dir: str = "."
    resume: str | None = None


@dataclass
class SampleRun:
    """`scripts/sample.py`."""

    checkpoint_vae: str | None = None
    checkpoint_gpt: str | None = None
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    checkpoint_classifier: str | None = None  # scores candidates when sampling.accept_n > 1
    ema: bool = True  # the GPT's EMA weights when its checkpoint has them; false = its raw trained weights
    device: str = "auto"
    out_dir: str = "."
    batch_size: int = 256  # sequences generated at once (accept_n multiplies the images asked for)
    gif: bool = False  # decoding.gif: the image appearing token by token
    gif_samples: int = 4  # side by side in the GIF
    gif_every: int | None = None  # tokens between frames; None = one row of the token grid
    completion: bool = False  # completion.png: the bottom half of real test images, sampled
    completion_images: int = 4  # test images (rows of the figure)
    completion_samples: int = 4  # completions per image (columns between input and original)


@dataclass
class EditRun:
    """`scripts/edit.py`: re-draw a region of real images, keep the rest (docs/masked.md)."""

    checkpoint_vae: str | None = None
    checkpoint_gpt: str | None = None  # a masked GPT draws exactly the region; a raster one all after its start
    images: list[str] | None = None  # image files (resized to the tokenizer's size); None = test_images of its data
    test_images: int = 4  # images=null: this many of the tokenizer's test split, spread out
    mask: str | None = None  # a PNG: the region is where it is not black (resized to the tokenizer's size)
    box: list[int] | None = None  # or [x0, y0, x1, y1] in pixels of the tokenizer's image size (x1, y1 excluded)
    class_label: str | None = None  # draw the region as this class; None = each test image's own (files: no class)
    num_variations: int = 4  # edits per image (columns after input and mask)
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    ema: bool = True
    device: str = "auto"
    out_dir: str = "."


@dataclass
class EvaluateRun:
    """`scripts/evaluate.py`: a tokenizer's reconstructions or a GPT's samples, measured on the test split."""

    stage: str = "gpt"  # tokenizer | gpt
    checkpoint_vae: str | None = None
    checkpoint_gpt: str | None = None  # stage=gpt
    checkpoint_classifier: str | None = None  # stage=gpt: per-class accuracy of class-conditional samples
    sampling: SamplingOptions = field(default_factory=SamplingOptions)  # how many: fid.num_samples
    cfg_scales: list[float] | None = None  # stage=gpt: one FID per scale (a sweep); None = sampling.cfg_scale
    fid: EvaluateFIDConfig = field(default_factory=EvaluateFIDConfig)
    ema: bool = True  # the GPT's EMA weights when it has them
    device: str = "auto"
    batch_size: int = 256  # images reconstructed / sequences sampled at once
    cache_dir: str | None = None  # stage=gpt: the token cache of the test split; None = train_gpt.py's default
    out_dir: str = "."


@dataclass
class TrainClassifierRun:
    """`scripts/train_classifier.py`: the classifier behind sample.py's sampling.accept_n."""

    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    out_dir: str = "."
    resume: str | None = None


@dataclass
class ClassifyRun:
    """`scripts/classify.py`: classify images from a trained GPT's features (Image GPT's linear probe and
    fine-tuning), on the labelled token cache of its tokenizer."""

    checkpoint_gpt: str | None = None
    checkpoint_vae: str | None = None  # None = the tokenizer the GPT checkpoint records
    mode: str = "probe"  # probe (linear, frozen GPT) | finetune (the whole GPT + a linear head)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    gen_weight: float = 0.5  # finetune: loss = cross-entropy + gen_weight * the GPT's own loss (iGPT's joint loss)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)  # finetune's steps; probe reads device, seed
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    ema: bool = True  # start from the GPT's EMA weights when it has them
    cache_dir: str | None = None  # the token cache; None = train_gpt.py's default for this tokenizer and data
    batch_size: int = 256  # probe: sequences per forward pass
    out_dir: str = "."
    resume: str | None = None  # finetune


@dataclass
class InspectDataRun:
    """`scripts/inspect_data.py`: load a dataset, print what it holds, save a grid of its images."""

    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    split: str = "train"  # train | val (dataset.val_size images held out of train) | test
    num_images: int = 64  # shown in the grid
    max_images: int | None = 10000  # statistics over at most this many images; None = all
    batch_size: int = 256
    num_workers: int = 0
    out_dir: str = "."


SCHEMAS = {
    "train_tokenizer_schema": TrainTokenizerRun,
    "train_gpt_schema": TrainGPTRun,
    "sample_schema": SampleRun,
    "edit_schema": EditRun,
    "evaluate_schema": EvaluateRun,
    "train_classifier_schema": TrainClassifierRun,
    "classify_schema": ClassifyRun,
    "inspect_data_schema": InspectDataRun,
}


# One schema per implementation: a group file starts with `defaults: [<name>_schema, _self_]`, so a key of
# another implementation (fsq's `levels` under a vq quantizer) fails when the config is composed.
def group_schemas() -> dict[str, dict[str, type]]:
    """{group: {"<name>_schema": dataclass}}: every implementation's schema, from the collected ones."""
    return {"tokenizer": {f"{name}_schema": cls for name, cls in TOKENIZER_CONFIGS.items()},
            "tokenizer/quantizer": {f"{name}_schema": cls for name, cls in QUANTIZER_CONFIGS.items()}}


def _node(schema: type) -> DictConfig:
    """The schema as a typed node, its implementation-choice fields left open (MISSING): the group file
    that fills one brings its own schema, which could not merge over another schema's default."""
    node = OmegaConf.structured(schema)
    for f in dataclasses.fields(schema):
        if "choices" in f.metadata:
            setattr(node, f.name, MISSING)
    return node


def register_configs() -> None:
    """Register every schema with Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    # The primary schemas type every group below them (dataset, trainer, ...), so those group files
    # need no schema of their own and a typo anywhere names its full key.
    for name, schema in SCHEMAS.items():
        cs.store(name=name, node=_node(schema))
    for group, schemas in group_schemas().items():
        for name, schema in schemas.items():
            cs.store(group=group, name=name, node=_node(schema))


def to_object(cfg: DictConfig | Any) -> Any:
    """Turn a composed (typed) DictConfig node into its dataclass instance, refusing unknown keys.

    Hydra's `+key=value` opens the struct flag, so a misspelt key added that way would otherwise be
    dropped silently; here it is an error that names the key.
    """
    if not isinstance(cfg, DictConfig):
        return cfg
    check_known_keys(cfg)
    return OmegaConf.to_object(cfg)


def check_known_keys(node: DictConfig, prefix: str = "") -> None:
    """UserError naming the first key of `node` (recursively) that its schema does not have."""
    schema = OmegaConf.get_type(node)
    known = {f.name for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else None
    for key in node.keys():
        full = f"{prefix}{key}"
        if known is not None and key not in known:
            raise UserError(f"{full} is not a config key; {schema.__name__} has: {', '.join(sorted(known))}")
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            check_known_keys(child, prefix=f"{full}.")


# ---------------------------------------------------------------------------------------------------------
# JSON -> dataclass (config.json files, token cache headers)


def dataclass_from_dict(cls: type[T], data: Mapping[str, Any], where: str | None = None) -> T:
    """Rebuild a (nested) config dataclass from a plain dict, rejecting keys it does not have and values of
    another type than the field's (an int is fine for a float); errors name the key as `where.key`."""
    where = where or cls.__name__
    if not isinstance(data, Mapping):
        raise UserError(f"{where} should be a JSON object, not {type(data).__name__} {data!r}")
    unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls) if f.init})
    if unknown:
        raise UserError(f"unknown keys for {cls.__name__}: {', '.join(unknown)}")
    hints = typing.get_type_hints(cls)  # resolves string annotations (`from __future__ import annotations`)
    choices = {f.name: f.metadata["choices"] for f in dataclasses.fields(cls) if "choices" in f.metadata}
    kwargs = {}
    for key, value in data.items():
        if key in choices and isinstance(value, Mapping):  # one of several schemas, picked by its `name`
            if value.get("name") not in choices[key]:
                raise UserError(f"{where}.{key}.name: unknown name {value.get('name')!r} (known: "
                                f"{', '.join(choices[key])})")
            kwargs[key] = dataclass_from_dict(choices[key][value["name"]], value, f"{where}.{key}")
            continue
        hint = hints[key]  # a nested dataclass is `X` or `X | None`
        sub = next((t for t in _options(hint) if dataclasses.is_dataclass(t)), None)
        if sub and isinstance(value, Mapping):
            kwargs[key] = dataclass_from_dict(sub, value, f"{where}.{key}")
        elif _fits(value, hint):
            kwargs[key] = float(value) if hint is float else value
        else:
            raise UserError(f"{where}.{key}={json.dumps(value)} is not {_kind(hint)}")
    try:
        return cls(**kwargs)
    except TypeError as e:  # a field without a default is missing
        raise UserError(f"cannot build {cls.__name__}: {e}") from None


def _options(hint: Any) -> tuple[Any, ...]:
    """The alternatives of a union (`X | None`), or the hint alone."""
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    return typing.get_args(hint) if union else (hint,)


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a field's type hint: bool, int, float (an int too), str, list[X], dict,
    None where optional; anything for Any and for types JSON cannot hold."""
    if hint is Any:
        return True
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_fits(value, option) for option in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    origin = typing.get_origin(hint)
    if origin in (list, tuple):
        args = typing.get_args(hint)
        item = args[0] if args and (origin is list or (len(args) == 2 and args[1] is Ellipsis)) else Any
        return isinstance(value, list) and all(_fits(v, item) for v in value)
    if origin is dict or hint is dict:
        return isinstance(value, Mapping)
    if dataclasses.is_dataclass(hint):
        return isinstance(value, Mapping)
    return True


def _kind(hint: Any) -> str:
    """A type hint in words, for error messages: `an int`, `a list of float`, `a str or null`."""
    names = {bool: "a bool (true/false)", int: "an int", float: "a number", str: "a string", type(None): "null"}
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_kind(option) for option in typing.get_args(hint))
    if typing.get_origin(hint) in (list, tuple):
        args = typing.get_args(hint)
        plural = {bool: "bools", int: "ints", float: "numbers", str: "strings"}
        return f"a list of {plural[args[0]]}" if args and args[0] in plural else "a list"
    if dataclasses.is_dataclass(hint):
        return f"a JSON object ({hint.__name__})"
    return names.get(hint, getattr(hint, "__name__", str(hint)))

"""Every config composes; typos and wrong types fail at compose time, naming the key. (What the user sees on
the command line for them is tested in test_errors.py.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import compose_run
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from vqgpt.config import CONFIG_DIR, DatasetConfig, TrainTokenizerRun, register_configs, to_object
from vqgpt.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
register_configs()


def _compose(config_name: str, overrides: list[str] = ()):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(overrides))
    OmegaConf.resolve(cfg)
    return cfg


def _names(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("name", _names("dataset"))
def test_every_dataset_config_composes(name):
    cfg = _compose("train_tokenizer", [f"dataset={name}"])
    data = to_object(cfg.dataset)
    assert isinstance(data, DatasetConfig)
    assert data.name == name
    assert data.channels in (1, 3) and data.image_size > 0
    assert data.num_classes is None or data.num_classes >= 1  # None: counted from the data (folder)
    if data.class_names is not None:
        assert len(data.class_names) == data.num_classes


@pytest.mark.parametrize("name", _names("experiment"))
def test_every_experiment_composes_with_its_stage(name):
    stage = name.split("_")[0]
    primary = {"tokenizer": "train_tokenizer", "gpt": "train_gpt"}[stage]
    cfg = _compose(primary, [f"experiment={name}", "trainer.max_steps=3", f"out_dir={name}"])
    run = to_object(cfg)
    assert run.trainer.max_steps == 3  # command-line overrides still win over the recipe
    if stage == "tokenizer":  # the recipe's model and discriminator can be built at its image size
        from vqgpt.tokenizers.vqgan.discriminator import build_discriminator
        from vqgpt.tokenizers.vqgan.model import VQGAN

        model = VQGAN(run.tokenizer)
        build_discriminator(run.tokenizer)
        assert model.latent_grid[0] * model.downsample_factor == run.dataset.image_size


@pytest.mark.parametrize("group,primary", [
    ("tokenizer", "train_tokenizer"), ("tokenizer/quantizer", "train_tokenizer"),
    ("gpt", "train_gpt"), ("trainer", "train_gpt"), ("logger", "train_gpt"),
])
def test_every_group_option_composes(group, primary):
    for name in _names(group):
        to_object(_compose(primary, [f"{group}={name}"]))


def test_primary_configs_compose_to_their_schemas():
    run = to_object(_compose("train_tokenizer"))
    assert isinstance(run, TrainTokenizerRun)
    assert run.tokenizer.quantizer.embedding_dim == run.tokenizer.embed_dim  # interpolated, not retyped
    _compose("train_gpt")
    _compose("sample", ["checkpoint_vae=a", "checkpoint_gpt=b"])
    _compose("inspect_data", ["dataset=patterns"])
    to_object(_compose("train_classifier", ["dataset=patterns"]))


def test_quantizer_subgroup_override():
    run = to_object(_compose("train_tokenizer", ["tokenizer/quantizer=fsq"]))
    assert run.tokenizer.quantizer.name == "fsq"


@pytest.mark.parametrize("override,key", [
    ("+dataset.imag_size=3", "imag_size"),
    ("+tokenizer.quantizer.num_codeword=8", "num_codeword"),
    ("+trainer.lrr=1", "lrr"),
])
def test_misspelt_added_key_fails_naming_the_key(override, key):
    # `+key=value` opens Hydra's struct flag; to_object (the scripts' first step) still refuses it.
    with pytest.raises(UserError, match=f"{key} is not a config key"):
        to_object(_compose("train_tokenizer", [override]))


def test_misspelt_key_without_plus_fails_naming_the_key():
    with pytest.raises(ConfigCompositionException) as err:
        _compose("train_tokenizer", ["dataset.imag_size=3"])
    assert "imag_size" in str(err.value)


def test_wrong_type_fails_at_compose_naming_the_key():
    with pytest.raises((ConfigCompositionException, ValidationError)) as err:
        _compose("train_tokenizer", ["trainer.batch_size=lots"])
    assert "batch_size" in str(err.value) + str(err.value.__cause__)


def test_misspelt_key_in_a_group_file_fails(tmp_path):
    bad = tmp_path / "configs"
    import shutil

    shutil.copytree(CONFIG_DIR, bad)
    (bad / "trainer" / "typo.yaml").write_text("max_step: 10\n")
    with initialize_config_dir(config_dir=str(bad), version_base="1.3"):
        with pytest.raises(ConfigCompositionException) as err:
            compose(config_name="train_tokenizer", overrides=["trainer=typo"])
    assert "max_step" in str(err.value) + str(err.value.__cause__)


def _run_script(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_help_lists_groups_and_options(tmp_path):
    out = _run_script(str(ROOT / "scripts" / "train_tokenizer.py"), "--help", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    for group in ("dataset:", "tokenizer:", "tokenizer/quantizer:", "trainer:", "logger:", "experiment:"):
        assert group in out.stdout
    for option in ("cifar10", "fashionmnist_small", "fsq", "wandb", "num_codewords", "batch_size"):
        assert option in out.stdout
    assert "_schema" not in out.stdout and "gpt_demo" not in out.stdout  # no typed schemas, no other stage's


def test_help_lists_only_the_groups_a_script_takes():
    """Regression: train_gpt.py --help listed the tokenizer groups (which it refuses) and the `*_schema` entries."""
    from vqgpt.cli import help_text

    text = help_text("train_gpt", ["gpt=tiny"])
    groups = text.split("== Configuration groups ==")[1].split("== Config ==")[0]
    assert [line.split(":")[0] for line in groups.split()[::1] if line.endswith(":")] == \
        ["dataset", "experiment", "gpt", "logger", "trainer"]
    assert "experiment: gpt_cifar10, gpt_demo, gpt_fashionmnist, gpt_fashionmnist_1h, gpt_fashionmnist_1h_kl," in groups
    assert "_schema" not in text and "n_layer: 2" in text  # the composed config, with the overrides given
    assert "(none: every option below is a key=value)" in help_text("sample", [])


@pytest.mark.parametrize(("script", "override", "words"), [
    ("train_gpt", "fid.num_samples=500", "fid.num_samples is not a config key"),
    ("evaluate", "sampling.num_samples=500", "sampling.num_samples is not a config key"),
])
def test_a_number_of_samples_has_one_key_per_script(script, override, words):
    """Regression: train_gpt.py's fid.num_samples (fid_samples decides) and evaluate.py's sampling.num_samples
    (fid.num_samples decides) were accepted and ignored."""
    from vqgpt.cli import check_command_line

    with pytest.raises(UserError, match=words):
        check_command_line(script, [override])
    assert compose_run("evaluate", "fid.num_samples=500").fid.num_samples == 500


def test_training_pictures_and_fid_draw_with_the_sampling_options(tmp_path, monkeypatch):
    """Regression: train_gpt.py's sampling.* were accepted and ignored (the grids drew at temperature 1)."""
    import torch
    from conftest import make_tokenizer

    import vqgpt.train.gpt as stage
    from vqgpt.train.engine import Engine

    make_tokenizer(tmp_path / "tok")
    seen = []
    monkeypatch.setattr(stage, "class_grid", lambda *args, **kwargs: seen.append(args[3]) or torch.zeros(1, 3, 8, 8))
    run = compose_run("train_gpt", f"checkpoint_vae={tmp_path / 'tok'}", "trainer=debug", "trainer.max_steps=2",
                      "gpt=tiny", "sampling.temperature=0.7", "sampling.top_k=5", "sampling.seed=3")
    stage.GPTTask(run, Engine(run.trainer, tmp_path / "gpt", {}, run.logger, resume=None)).snapshot(None, 2)
    assert (seen[0].temperature, seen[0].top_k, seen[0].seed) == (0.7, 5, 3)
    bad = compose_run("train_gpt", f"checkpoint_vae={tmp_path / 'tok'}", "trainer=debug", "sampling.top_k=0")
    with pytest.raises(UserError, match="top_k"):  # refused before the first step, not at the first picture
        stage.GPTTask(bad, Engine(bad.trainer, tmp_path / "bad", {}, bad.logger, resume=None))

"""docs/errors.md, row by row: each bad input a new user tries, run through the real script in a subprocess,
gives one `error:` line (exit status 2) naming the problem and the fix, and loses or half-writes nothing.

Tests follow the table's order and are named after its rows.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import PATTERNS, make_gpt, make_tokenizer, one_error_line

from vqgpt.checkpoint import WRITTEN_HERE, checkpoint_hash, load_checkpoint, save_checkpoint
from vqgpt.data import dataset_info
from vqgpt.data.token_cache import prepare_token_cache
from vqgpt.errors import UserError
from vqgpt.tokenizers.vqgan.model import VQGAN
from vqgpt.train.state import resume_from

# A tiny VQ-GAN on 16 px patterns (as in test_scripts.py): a few steps on the CPU in seconds.
TINY_TOKENIZER = ("dataset=patterns", "tokenizer/quantizer=vq", "dataset.image_size=16", "dataset.num_train=64",
                  "dataset.num_test=16", "trainer=debug", "tokenizer.channels=8", "tokenizer.z_channels=8",
                  "tokenizer.embed_dim=8", "tokenizer.ch_mult=[1,2]", "tokenizer.quantizer.num_codewords=16",
                  "tokenizer.loss.perceptual_weight=0", "tokenizer.loss.disc_start=2",
                  "tokenizer.loss.disc_channels=8", "tokenizer.loss.disc_layers=1")
# The config of conftest's tiny_ckpts/tok (8 px patterns, K=32): what resuming it must repeat.
TOK_CKPT_CONFIG = ("dataset=patterns", "dataset.image_size=8", "dataset.num_train=24", "dataset.num_test=8",
                   "tokenizer/quantizer=vq", "tokenizer.channels=8", "tokenizer.ch_mult=[1,2]",
                   "tokenizer.num_res_blocks=1", "tokenizer.z_channels=8", "tokenizer.embed_dim=4",
                   "tokenizer.quantizer.num_codewords=32", "trainer=debug", "tokenizer.loss.perceptual_weight=0",
                   "tokenizer.loss.disc_channels=8", "tokenizer.loss.disc_layers=1")
# The GPT of tiny_ckpts/gpt (one layer, 2 heads, 16 wide), trained on tiny_ckpts/tok's tokens.
GPT_CKPT_CONFIG = ("gpt=tiny", "gpt.n_layer=1", "gpt.n_embd=16", "trainer=debug")


def tokens_of(vae: Path, tmp_path: Path) -> tuple[str, str]:
    """`checkpoint_vae=... cache_dir=...` with the token cache built here, so the script under test prints no
    tokenizing progress bars before its error line."""
    cache, _ = prepare_token_cache(str(vae), None, str(tmp_path / "codes"))
    return f"checkpoint_vae={vae}", f"cache_dir={cache}"


def run_files(run: Path) -> list[str]:
    """What a refused run left in its run dir besides Hydra's .hydra/, its log and config.yaml."""
    if not run.exists():
        return []
    return sorted(p.name for p in run.iterdir() if p.name not in (".hydra", "config.yaml") and p.suffix != ".log")


# ---------------------------------------------------------------------------------------------------------
# The command line: refused before Hydra creates the run dir


@pytest.mark.parametrize("script,typed,listed,not_listed", [
    ("train_tokenizer.py", "tokenizer_dmo", "tokenizer_demo", "gpt_demo"),
    ("train_gpt.py", "gpt_dmo", "gpt_demo", "tokenizer_demo"),
])
def test_misspelt_experiment_lists_the_stages_experiments(tmp_path, run_script, script, typed, listed, not_listed):
    out = run_script(script, f"experiment={typed}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    line = one_error_line(out)
    assert f"experiment={typed} is unknown" in line and listed in line and not_listed not in line
    assert not (tmp_path / "run").exists()


def test_another_stages_experiment_names_its_script_and_lists_this_stages(tmp_path, run_script):
    out = run_script("train_tokenizer.py", "experiment=gpt_demo", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    line = one_error_line(out)
    assert "not a train_tokenizer experiment" in line and "scripts/train_gpt.py experiment=gpt_demo" in line
    assert "tokenizer_demo" in line and "gpt_fashionmnist" not in line
    assert not (tmp_path / "run").exists()


def test_unknown_group_option_lists_the_valid_names(tmp_path, run_script):
    out = run_script("train_tokenizer.py", "dataset=nosuch", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    line = one_error_line(out)
    assert "dataset=nosuch is unknown" in line and "cifar10" in line and "patterns" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override,words", [
    ("trainer.lrr=1", ["trainer.lrr is not a config key", "did you mean trainer.lr?"]),
    ("+trainer.lrr=1", ["trainer.lrr", "TrainerConfig has:"]),
    ("trainer.batch_size=lots", ["trainer.batch_size=lots", "'lots' is not an integer"]),
    ("tokenizer.quantizer.levels=[4,4]", ["tokenizer.quantizer.levels", "tokenizer/quantizer=fsq"]),
])
def test_misspelt_key_wrong_type_or_other_quantizers_key_names_the_key(tmp_path, run_script, override, words):
    out = run_script("train_tokenizer.py", override, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    line = one_error_line(out)
    assert all(w in line for w in words), line
    assert not (tmp_path / "run").exists()


def test_batch_size_larger_than_the_training_images(tmp_path, run_script):
    out = run_script("train_tokenizer.py", *TINY_TOKENIZER, "trainer.batch_size=100",
                     f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert "trainer.batch_size=100 is larger than the 64 training images" in one_error_line(out)
    assert run_files(tmp_path / "run") == []


@pytest.mark.parametrize("script,override", [
    ("train_tokenizer.py", "trainer.batch_size=-1"),
    ("train_tokenizer.py", "trainer.checkpoint_every=0"),
    ("train_gpt.py", "trainer.batch_size=-1"),
])
def test_non_positive_trainer_value_before_step_1(tiny_ckpts, tmp_path, run_script, script, override):
    vae = [f"checkpoint_vae={tiny_ckpts / 'tok'}"] if script == "train_gpt.py" else list(TINY_TOKENIZER)
    out = run_script(script, *vae, override, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert f"{override} must be a positive integer" in one_error_line(out)
    assert run_files(tmp_path / "run") == []


@pytest.mark.parametrize("override", ["tokenizer.in_channels=1", "tokenizer.image_size=32"])
def test_tokenizer_channels_or_size_disagreeing_with_the_data(tmp_path, run_script, override):
    out = run_script("train_tokenizer.py", *TINY_TOKENIZER, override, f"hydra.run.dir={tmp_path / 'run'}",
                     cwd=tmp_path)
    line = one_error_line(out)
    assert override in line and "the dataset gives 3x16px images" in line and "${dataset.channels}" in line
    assert run_files(tmp_path / "run") == []


def test_run_dir_that_cannot_be_created(tmp_path, run_script):
    blocker = tmp_path / "taken"
    blocker.write_text("mine")
    out = run_script("train_tokenizer.py", *TINY_TOKENIZER, f"hydra.run.dir={blocker / 'run'}", cwd=tmp_path)
    line = one_error_line(out)
    assert f"hydra.run.dir={blocker / 'run'} cannot be created: {blocker} is a file" in line
    assert blocker.read_text() == "mine"


# ---------------------------------------------------------------------------------------------------------
# The run dir's own names, taken by something else


def test_sample_with_images_a_file_in_the_run_dir(tiny_ckpts, tmp_path, run_script):
    run = tmp_path / "run"
    run.mkdir()
    (run / "images").write_text("mine")
    out = run_script("sample.py", f"checkpoint_vae={tiny_ckpts / 'tok'}", f"checkpoint_gpt={tiny_ckpts / 'gpt'}",
                     "device=cpu", f"hydra.run.dir={run}", cwd=tmp_path)
    assert f"{run / 'images'} is a file" in one_error_line(out)
    assert (run / "images").read_text() == "mine" and not (run / "samples.png").exists()


@pytest.mark.parametrize("script,taken", [
    ("train_tokenizer.py", "file"), ("train_tokenizer.py", "other directory"), ("train_gpt.py", "file"),
])
def test_checkpoints_last_taken_before_the_first_step(tiny_ckpts, tmp_path, run_script, script, taken):
    run = tmp_path / "run"
    last = run / "checkpoints" / "last"
    if taken == "file":
        last.parent.mkdir(parents=True)
        last.write_text("mine")
    else:
        last.mkdir(parents=True)
        (last / "notes.txt").write_text("mine")
    gpt_args = (f"checkpoint_vae={tiny_ckpts / 'tok'}", "trainer=debug")
    args = TINY_TOKENIZER if script == "train_tokenizer.py" else gpt_args
    out = run_script(script, *args, f"hydra.run.dir={run}", cwd=tmp_path)
    line = one_error_line(out)
    assert str(last) in line and "move it away" in line
    assert (last if taken == "file" else last / "notes.txt").read_text() == "mine"
    assert run_files(run) == ["checkpoints"]  # refused before step 1: no metrics, no samples


# ---------------------------------------------------------------------------------------------------------
# Checkpoints and caches given as input


def test_checkpoint_config_with_a_wrong_value_type(tiny_ckpts, tmp_path, run_script):
    gpt = tmp_path / "gpt"
    shutil.copytree(tiny_ckpts / "gpt", gpt)
    meta = json.loads((gpt / "config.json").read_text())
    meta["model_config"]["n_layer"] = "two"
    (gpt / "config.json").write_text(json.dumps(meta))
    out = run_script("sample.py", f"checkpoint_vae={tiny_ckpts / 'tok'}", f"checkpoint_gpt={gpt}", "device=cpu",
                     f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    line = one_error_line(out)
    assert 'model_config.n_layer="two" is not an int' in line and str(gpt / "config.json") in line
    assert run_files(tmp_path / "run") == []


@pytest.mark.parametrize("override,named", [
    ("tokenizer.channels=16", "tokenizer.channels=16 where the checkpoint has 8"),
    ("tokenizer.quantizer.num_codewords=16", "tokenizer.quantizer.num_codewords=16 where the checkpoint has 32"),
])
def test_resume_tokenizer_with_another_architecture_or_codebook_size(tiny_ckpts, tmp_path, run_script, override,
                                                                     named):
    out = run_script("train_tokenizer.py", *TOK_CKPT_CONFIG, override, f"resume={tiny_ckpts / 'tok'}",
                     f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    line = one_error_line(out)
    assert "is another tokenizer architecture" in line and named in line and "drop resume=" in line
    assert run_files(tmp_path / "run") == []


def test_resume_with_only_a_loss_weight_changed_continues_and_says_so(tiny_ckpts, tmp_path, capsys):
    """Not an error: "another architecture" means other weight shapes; a loss weight may change on resume."""
    ckpt = tmp_path / "tok"
    saved = load_checkpoint(tiny_ckpts / "tok")
    config = saved.model.config
    meta = {k: v for k, v in saved.meta.items() if k not in WRITTEN_HERE}
    save_checkpoint(ckpt, saved.model, stage="tokenizer", arch="vqgan", meta=meta, step=2, train_state={"step": 2})
    model = VQGAN(dataclasses.replace(config, loss=dataclasses.replace(config.loss, disc_start=7)))
    assert resume_from(str(ckpt), model, "tokenizer") == {"step": 2}
    assert f"tokenizer.loss.disc_start=7 where the checkpoint has {config.loss.disc_start}" in capsys.readouterr().out
    assert torch.equal(model.quant_conv.weight, saved.model.quant_conv.weight)


def test_resume_gpt_with_another_architecture(tiny_ckpts, tmp_path, run_script):
    out = run_script("train_gpt.py", *tokens_of(tiny_ckpts / "tok", tmp_path),
                     *GPT_CKPT_CONFIG, "gpt.n_layer=2", f"resume={tiny_ckpts / 'gpt'}",
                     f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    line = one_error_line(out)
    assert "is another gpt architecture" in line and "gpt.n_layer=2 where the checkpoint has 1" in line
    assert run_files(tmp_path / "run") == []


def test_truncated_token_cache(tiny_ckpts, tmp_path, run_script):
    vae, cache_dir = tokens_of(tiny_ckpts / "tok", tmp_path)
    cache = tmp_path / "codes"
    tokens = cache / "train_tokens.npy"
    tokens.write_bytes(tokens.read_bytes()[:-40])
    out = run_script("train_gpt.py", vae, cache_dir, "trainer=debug",
                     f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    line = one_error_line(out)
    assert f"token cache {cache}" in line and "damaged" in line and f"delete {cache} to rebuild it" in line
    assert run_files(tmp_path / "run") == []


@pytest.mark.parametrize("state", ["truncated", "missing"])
def test_resume_with_a_truncated_or_missing_train_state(tiny_ckpts, tmp_path, run_script, state):
    ckpt = tmp_path / "tok"
    shutil.copytree(tiny_ckpts / "tok", ckpt)
    if state == "truncated":
        torch.save({"step": 2, "opt_g": {"state": {}, "param_groups": []}}, ckpt / "train_state.pt")
        data = (ckpt / "train_state.pt").read_bytes()
        (ckpt / "train_state.pt").write_bytes(data[: len(data) // 2])
    before = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    out = run_script("train_tokenizer.py", *TOK_CKPT_CONFIG, f"resume={ckpt}", f"hydra.run.dir={tmp_path / 'run'}",
                     cwd=tmp_path)
    line = one_error_line(out)
    assert "train_state.pt" in line and "drop resume= to start a fresh run" in line
    assert "stay usable for sampling" in line  # where the weights can still go
    assert {p.name: p.read_bytes() for p in ckpt.iterdir()} == before
    assert run_files(tmp_path / "run") == []


def test_resume_gpt_with_a_tokenizer_of_the_same_shape_but_other_weights(tiny_ckpts, tmp_path, run_script):
    gpt = tmp_path / "gpt"
    model = make_gpt(tmp_path / "scratch")  # as tiny_ckpts/gpt, but recording the tokenizer it learnt from
    meta = {**dataset_info(PATTERNS), "vocab_size": 32, "block_size": 16, "latent_grid": [4, 4],
            "tokenizer_hash": checkpoint_hash(tiny_ckpts / "tok")}
    save_checkpoint(gpt, model, stage="gpt", arch="gpt", meta=meta, step=2, train_state={"step": 2})
    make_tokenizer(tmp_path / "tok2", seed=1)  # same shapes, other weights
    out = run_script("train_gpt.py", *tokens_of(tmp_path / "tok2", tmp_path),
                     *GPT_CKPT_CONFIG, f"resume={gpt}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    line = one_error_line(out)
    assert "trained on the tokens of another tokenizer" in line and "pass the tokenizer it was trained with" in line
    assert run_files(tmp_path / "run") == []


# ---------------------------------------------------------------------------------------------------------
# Environment


def test_wandb_mode_environment_variable_is_named(tmp_path, run_script):
    out = run_script("train_tokenizer.py", *TINY_TOKENIZER, "logger=wandb", f"hydra.run.dir={tmp_path / 'run'}",
                     cwd=tmp_path, env={"WANDB_MODE": "bogus"})
    line = one_error_line(out)
    assert "environment variable WANDB_MODE is 'bogus'" in line and "unset WANDB_MODE" in line
    assert run_files(tmp_path / "run") == []


@pytest.mark.parametrize(("args", "words"), [
    (["dataset=folder", "dataset.root=/data/my", "imgs"],
     "'imgs' is not key=value: the shell split `dataset.root=/data/my imgs` at a space; quote the whole override: "
     "'dataset.root=/data/my imgs'"),
    (["dataset=folder", "dataset.root=/data/my imgs!"], """quote it for Hydra inside the shell's quotes: \
'dataset.root="/data/my imgs!"'"""),
    (["dataset=folder", "dataset.root=/data/it's here"], """quote it for Hydra inside the shell's quotes: \
"dataset.root=\\"/data/it's here\\"\""""),
])
def test_a_value_with_a_space_or_syntax_says_how_to_quote_it(args, words):
    """Regression: these printed Hydra's raw `LexerNoViableAltException: ...`."""
    from vqgpt.cli import check_command_line
    from vqgpt.config import register_configs

    register_configs()
    with pytest.raises(UserError) as err:
        check_command_line("train_tokenizer", args)
    assert words in str(err.value)
    fixed = [args[0], 'dataset.root="/data/my imgs!"']  # what the line says to type composes
    assert check_command_line("train_tokenizer", fixed) is not None


def test_a_renamed_key_names_its_new_name():
    """trainer.sample_and_save_freq only ever drew pictures: it is trainer.sample_every now."""
    from vqgpt.cli import check_command_line
    from vqgpt.config import register_configs

    register_configs()
    with pytest.raises(UserError, match=r"^trainer.sample_and_save_freq is now trainer.sample_every; use that name$"):
        check_command_line("train_gpt", ["trainer.sample_and_save_freq=5"])


def test_an_experiment_of_another_quantizer_names_the_key_and_its_file():
    """Regression: docs/configs.md's `tokenizer/quantizer=fsq experiment=tokenizer_demo` said only
    `ConfigKeyError raised while composing config`."""
    from vqgpt.cli import check_command_line
    from vqgpt.config import register_configs

    register_configs()
    with pytest.raises(UserError, match=r"^configs/experiment/tokenizer_demo.yaml sets it: "
                                        r"tokenizer.quantizer.num_codewords is not a FSQConfig key"):
        check_command_line("train_tokenizer", ["tokenizer/quantizer=fsq", "experiment=tokenizer_demo"])

"""Checkpoint directories: round trip, strict loading, clear refusals, no pickle execution, crash safety."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import random
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from vqgpt import checkpoint
from vqgpt.checkpoint import checkpoint_hash, load_checkpoint, load_model, read_meta, save_checkpoint
from vqgpt.config import dataclass_from_dict
from vqgpt.errors import UserError
from vqgpt.registry import register_model
from vqgpt.train.state import load_train_state, rng_state, set_rng_state


@dataclass
class HeadConfig:
    bias: bool = False


@dataclass
class TinyConfig:
    vocab_size: int = 11
    n_embd: int = 8
    head: HeadConfig = field(default_factory=HeadConfig)
    extra_head: HeadConfig | None = None


@register_model("test_tiny", TinyConfig)
class Tiny(nn.Module):
    """A tiny token MLP with a tied embedding/head, like the GPT's."""

    def __init__(self, config: TinyConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.n_embd)
        width = config.n_embd
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=config.head.bias)
        self.head.weight = self.embed.weight  # tied: safetensors must not choke on the shared tensor

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.mlp(self.embed(idx)))  # (B, T, vocab_size)


DATA_META = {
    "dataset": "patterns",
    "image_size": 16,
    "channels": 3,
    "num_classes": 2,
    "class_names": ["a", "b"],
}
GPT_META = {**DATA_META, "vocab_size": 11, "block_size": 16}
TOKENIZER_META = {**DATA_META, "codebook_size": 11, "latent_grid": [4, 4]}


def make_model(seed: int = 0) -> Tiny:
    torch.manual_seed(seed)
    return Tiny(TinyConfig())


def save(path: Path, model: nn.Module | None = None, step: int = 1, stage: str = "gpt", **kwargs) -> Path:
    meta = GPT_META if stage == "gpt" else TOKENIZER_META
    model = model if model is not None else make_model()
    return save_checkpoint(path, model, stage=stage, arch="test_tiny", meta=meta, step=step, **kwargs)


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=0)


def edit_config(path: Path, **changes) -> None:
    meta = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**meta, **changes}))


def test_round_trip_rebuilds_model_from_checkpoint_alone(tmp_path):
    model = make_model()
    path = save(tmp_path / "ckpt", model, step=7)
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]

    ckpt = load_checkpoint(path, expected_stage="gpt")
    assert isinstance(ckpt.model, Tiny) and not ckpt.model.training
    assert ckpt.model.config == model.config and isinstance(ckpt.model.config.head, HeadConfig)
    assert ckpt.model.head.weight is ckpt.model.embed.weight  # still tied after loading
    assert_same_weights(ckpt.model, model)
    idx = torch.randint(0, 11, (2, 5))
    torch.testing.assert_close(ckpt.model(idx), model.eval()(idx))

    meta = ckpt.meta
    assert meta["format_version"] == checkpoint.FORMAT_VERSION and meta["stage"] == "gpt"
    assert meta["arch"] == "test_tiny" and meta["step"] == 7
    assert meta["model_config"] == {
        "vocab_size": 11,
        "n_embd": 8,
        "head": {"bias": False},
        "extra_head": None,
    }
    assert {k: meta[k] for k in GPT_META} == GPT_META
    assert {"python", "torch", "vqgpt", "safetensors", "numpy"} <= meta["versions"].keys()
    assert meta["weights_sha256"][:16] == checkpoint_hash(path)
    assert read_meta(path) == meta
    assert isinstance(load_model(path), Tiny)
    assert load_train_state(path) is None


def test_hash_tells_different_weights_apart(tmp_path):
    a, b = save(tmp_path / "a", make_model(0)), save(tmp_path / "b", make_model(1))
    assert checkpoint_hash(a) != checkpoint_hash(b)
    assert checkpoint_hash(save(tmp_path / "a2", make_model(0))) == checkpoint_hash(a)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"meta": {k: v for k, v in GPT_META.items() if k != "vocab_size"}}, "vocab_size"),
        ({"meta": {**GPT_META, "step": 3}}, "step"),
        ({"stage": "diffusion"}, "unknown stage"),
        ({"arch": "nope"}, "not registered"),
        ({"step": -1}, "non-negative"),
        ({"meta": {**GPT_META, "note": object()}}, "plain JSON"),
        ({"train_state": {"sampler": random.Random(0)}}, "tensors and plain containers"),
    ],
)
def test_save_rejects_bad_arguments_and_leaves_nothing(tmp_path, kwargs, message):
    args = {"stage": "gpt", "arch": "test_tiny", "meta": GPT_META, "step": 1, **kwargs}
    with pytest.raises(ValueError, match=message):
        save_checkpoint(tmp_path / "ckpt", make_model(), **args)
    assert list(tmp_path.iterdir()) == []


def test_save_refuses_to_replace_a_directory_that_is_not_a_checkpoint(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a vqgpt checkpoint"):
        save(tmp_path / "run")
    assert (tmp_path / "run" / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("edit", ["missing", "unexpected", "shape"])
def test_strict_loading_names_the_keys(tmp_path, edit):
    path = save(tmp_path / "ckpt")
    weights = load_file(path / "model.safetensors")
    if edit == "missing":
        del weights["mlp.0.bias"]
    elif edit == "unexpected":
        weights["mlp.9.weight"] = torch.zeros(2)
    else:
        weights["mlp.0.bias"] = torch.zeros(3)
    save_file(weights, path / "model.safetensors")
    key = "mlp.9.weight" if edit == "unexpected" else "mlp.0.bias"
    with pytest.raises(UserError, match=key) as err:
        load_model(path)
    assert "\n" not in str(err.value)


def test_stage_mismatch_says_which_stage_it_is(tmp_path):
    path = save(tmp_path / "gpt", stage="gpt")
    with pytest.raises(UserError, match="is a 'gpt' checkpoint .* a 'tokenizer' checkpoint is expected"):
        load_model(path, expected_stage="tokenizer")
    with pytest.raises(UserError, match="'gpt' checkpoint"):
        read_meta(path, expected_stage="tokenizer")
    tokenizer = save(tmp_path / "tok", stage="tokenizer")
    assert read_meta(tokenizer, expected_stage="tokenizer")["latent_grid"] == [4, 4]


def _break(tmp_path: Path, case: str) -> Path:
    """A path that is not a loadable vqgpt checkpoint, one way or another."""
    if case == "missing":
        return tmp_path / "nope"
    if case in ("pt_file", "ckpt_file"):
        file = tmp_path / ("model.pt" if case == "pt_file" else "last.ckpt")
        torch.save({"state_dict": make_model().state_dict()}, file)
        return file
    path = save(tmp_path / "ckpt")
    if case == "config_file":
        return path / "config.json"
    if case == "no_config":
        (path / "config.json").unlink()
    elif case == "corrupt_json":
        (path / "config.json").write_text('{"format_version": 1, "stage": ')
    elif case == "foreign_json":
        (path / "config.json").write_text('{"_class_name": "UNet2DModel"}')
    elif case == "future_version":
        edit_config(path, format_version=checkpoint.FORMAT_VERSION + 1)
    elif case == "unknown_stage":
        edit_config(path, stage="diffusion")
    elif case == "unknown_arch":
        edit_config(path, arch="not_registered")
    elif case == "unknown_config_key":
        edit_config(path, model_config={"vocab_size": 11, "n_embd": 8, "head": {"bias": False, "ln": True}})
    elif case == "no_weights":
        (path / "model.safetensors").unlink()
    elif case == "corrupt_weights":
        (path / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00garbage!")
    return path


NOT_A_CHECKPOINT = {
    "missing": "does not exist",
    "pt_file": "is a file, not a vqgpt checkpoint",
    "ckpt_file": "is a file, not a vqgpt checkpoint",
    "config_file": "pass its directory",
    "no_config": "has no config.json",
    "corrupt_json": "not valid JSON",
    "foreign_json": "not a vqgpt checkpoint",
    "future_version": "upgrade vqgpt",
    "unknown_stage": "unknown stage 'diffusion'",
    "unknown_arch": "unknown arch 'not_registered'",
    "unknown_config_key": "unknown keys for HeadConfig: ln",
    "no_weights": "has no model.safetensors",
    "corrupt_weights": "is damaged",
}


@pytest.mark.parametrize("case", NOT_A_CHECKPOINT)
def test_not_a_checkpoint_is_a_one_line_user_error(tmp_path, case):
    path = _break(tmp_path, case)
    with pytest.raises(UserError, match=NOT_A_CHECKPOINT[case]) as err:
        load_model(path)
    message = str(err.value)
    assert "\n" not in message and str(path if case != "config_file" else path.parent) in message


class Payload:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("where", ["train_state_zip", "train_state_legacy", "as_checkpoint_path"])
def test_pickle_payload_is_refused_without_running(tmp_path, where):
    marker = tmp_path / "pwned"
    path = save(tmp_path / "ckpt")
    file = tmp_path / "evil.pt" if where == "as_checkpoint_path" else path / "train_state.pt"
    if where == "train_state_legacy":
        file.write_bytes(pickle.dumps({"optimizer": Payload(marker)}, protocol=2))  # torch's legacy format
    else:
        torch.save({"optimizer": Payload(marker)}, file)

    with pytest.raises(UserError) as err:
        load_model(file) if where == "as_checkpoint_path" else load_train_state(path)
    assert "\n" not in str(err.value) and str(file) in str(err.value)
    assert not marker.exists()
    if where != "as_checkpoint_path":
        assert "system" in str(err.value)  # names the callable it refused (posix.system)
    if where == "train_state_zip":
        torch.load(file, weights_only=False)  # the payload is live: trusting the file would have run it
        assert marker.exists()


def _siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


def _boom(*args, **kwargs):
    raise OSError("simulated crash")


@pytest.mark.parametrize("step", ["weights", "config", "train_state", "swap_in"])
def test_failed_save_keeps_the_old_checkpoint(tmp_path, monkeypatch, step):
    path = save(tmp_path / "run" / "last", make_model(0), step=1)
    if step == "weights":

        def partial_write(model, filename):
            Path(filename).write_bytes(b"\x00" * 10)
            raise OSError("disk full")

        monkeypatch.setattr(checkpoint, "_save_weights", partial_write)
    elif step == "config":
        monkeypatch.setattr(checkpoint.json, "dumps", _boom)
    elif step == "train_state":
        monkeypatch.setattr(checkpoint.torch, "save", _boom)
    else:
        real_replace = os.replace

        def replace(src, dst):
            if ".tmp-" in str(src):  # the new checkpoint moving in, after the old one moved aside
                raise OSError("simulated crash")
            real_replace(src, dst)

        monkeypatch.setattr(checkpoint.os, "replace", replace)

    with pytest.raises(OSError):
        save(path, make_model(1), step=2, train_state={"step": torch.tensor(2)})
    monkeypatch.undo()
    assert _siblings(path) == ["last"]  # no temp dir, nothing left aside
    ckpt = load_checkpoint(path)
    assert ckpt.meta["step"] == 1 and ckpt.path == path
    assert_same_weights(ckpt.model, make_model(0))


@pytest.mark.parametrize("killed", ["while_writing", "between_renames", "before_cleanup"])
def test_loader_finds_the_good_checkpoint_after_a_killed_save(tmp_path, killed):
    """Recreate on disk what each moment of a save leaves behind when the process dies there."""
    path = save(tmp_path / "run" / "last", make_model(0), step=1)
    new = save(tmp_path / "new", make_model(1), step=2)
    tmp = path.with_name(".last.tmp-k1ll3d")
    aside = path.with_name("last.old")
    if killed == "while_writing":
        new.rename(tmp)
    elif killed == "between_renames":
        path.rename(aside)
        new.rename(tmp)  # complete, but never swapped in: the loader must not pick it up
    else:
        path.rename(aside)
        new.rename(path)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ckpt = load_checkpoint(path)
    expected_step = 2 if killed == "before_cleanup" else 1
    assert ckpt.meta["step"] == expected_step
    assert_same_weights(ckpt.model, make_model(expected_step - 1))
    assert len(caught) == (killed == "between_renames")
    assert ckpt.path == (aside if killed == "between_renames" else path)

    save(path, make_model(2), step=3)  # the next save cleans up whatever the crash left
    assert _siblings(path) == ["last"] and read_meta(path)["step"] == 3


def test_train_state_round_trip_restores_optimizer_and_random_streams(tmp_path):
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (step + 1))
    idx = torch.randint(0, 11, (4, 6))

    def train_step(model: nn.Module, opt: torch.optim.Optimizer) -> None:
        model(idx).logsumexp(-1).mean().backward()
        opt.step()
        opt.zero_grad()

    for _ in range(2):
        train_step(model, opt)
        sched.step()
    state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng": rng_state(), "step": 2}
    expected = (torch.rand(4), random.random(), np.random.rand(3), np.random.randn(3))
    path = save(tmp_path / "ckpt", model, step=2, train_state=state)

    torch.manual_seed(123), random.seed(123), np.random.seed(123)  # a fresh process, other streams
    loaded = load_train_state(path)
    set_rng_state(loaded["rng"])
    assert torch.equal(torch.rand(4), expected[0]) and random.random() == expected[1]
    np.testing.assert_array_equal(np.random.rand(3), expected[2])
    np.testing.assert_array_equal(np.random.randn(3), expected[3])

    resumed = load_model(path).train()
    resumed_opt = torch.optim.AdamW(resumed.parameters(), lr=1e-2, betas=(0.9, 0.95))
    resumed_sched = torch.optim.lr_scheduler.LambdaLR(resumed_opt, lambda step: 1.0 / (step + 1))
    resumed_opt.load_state_dict(loaded["optimizer"])  # after building the scheduler, which resets the lr
    resumed_sched.load_state_dict(loaded["scheduler"])
    assert resumed_sched.get_last_lr() == sched.get_last_lr() and loaded["step"] == 2
    train_step(model, opt)
    train_step(resumed, resumed_opt)
    assert_same_weights(resumed, model)  # the moments came back, so the next step is the same step


def test_dataclass_from_dict_rebuilds_nested_and_rejects_unknown_keys():
    config = dataclass_from_dict(TinyConfig, {"n_embd": 8, "extra_head": {"bias": True}})
    assert config == TinyConfig(extra_head=HeadConfig(bias=True))
    assert isinstance(config.head, HeadConfig)
    with pytest.raises(UserError, match="unknown keys for TinyConfig: depth, width"):
        dataclass_from_dict(TinyConfig, {"width": 1, "depth": 2})


@pytest.mark.parametrize("data,message", [
    ({"vocab_size": "two"}, 'TinyConfig.vocab_size="two" is not an int'),
    ({"vocab_size": 2.5}, "TinyConfig.vocab_size=2.5 is not an int"),
    ({"vocab_size": True}, "TinyConfig.vocab_size=true is not an int"),
    ({"head": {"bias": "yes"}}, 'TinyConfig.head.bias="yes" is not a bool'),
    ({"head": 3}, "TinyConfig.head=3 is not a JSON object"),
    ({"extra_head": [1]}, r"TinyConfig.extra_head=\[1\] is not a JSON object \(HeadConfig\) or null"),
])
def test_dataclass_from_dict_refuses_a_value_of_another_type_naming_the_key(data, message):
    with pytest.raises(UserError, match=message):
        dataclass_from_dict(TinyConfig, data)


def test_dataclass_from_dict_accepts_what_json_gives_for_each_type():
    from vqgpt.config import FSQConfig, GPTConfig, VQGANConfig

    assert dataclass_from_dict(TinyConfig, {"extra_head": None}) == TinyConfig()
    gpt = dataclass_from_dict(GPTConfig, {"dropout": 0, "num_classes": None, "bias": True})
    assert gpt.dropout == 0.0 and isinstance(gpt.dropout, float) and gpt.num_classes is None  # int fits a float
    config = VQGANConfig(quantizer=FSQConfig(levels=[4, 4]), attn_resolutions=[8])
    assert dataclass_from_dict(VQGANConfig, json.loads(json.dumps(dataclasses.asdict(config)))) == config
    with pytest.raises(UserError, match=r'model_config.quantizer.levels=\[4, "4"\] is not a list of ints'):
        dataclass_from_dict(VQGANConfig, {"quantizer": {"name": "fsq", "levels": [4, "4"]}}, where="model_config")


def test_wrong_value_type_in_config_json_is_one_line_naming_key_and_file(tmp_path):
    path = save(tmp_path / "ckpt")
    meta = json.loads((path / "config.json").read_text())
    edit_config(path, model_config={**meta["model_config"], "n_embd": "eight"})
    with pytest.raises(UserError, match='config.json: model_config.n_embd="eight" is not an int; correct that value'):
        load_model(path)


def test_register_model_refuses_a_second_class_under_the_same_arch():
    with pytest.raises(ValueError, match="already registered"):
        register_model("test_tiny", TinyConfig)(type("Other", (nn.Module,), {}))


def test_temp_dirs_from_killed_saves_are_not_checkpoints(tmp_path):
    path = save(tmp_path / "last")
    shutil.move(path, tmp_path / ".last.tmp-abc")
    with pytest.raises(UserError, match="does not exist"):
        read_meta(path)


@pytest.mark.parametrize("umask,dir_mode,file_mode", [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600)])
def test_every_checkpoint_file_follows_the_umask(tmp_path, umask, dir_mode, file_mode):
    """Regression: model.safetensors came out 0600 (safetensors' own choice) beside a 0644 config.json."""
    old_umask = os.umask(umask)
    try:
        path = save(tmp_path / "ckpt", train_state={"step": 1})
        save(path, step=2, train_state={"step": 2})  # a save over an older checkpoint too
    finally:
        os.umask(old_umask)
    assert path.stat().st_mode & 0o777 == dir_mode  # readable by the team under 022, unlike a mkdtemp dir
    modes = {p.name: p.stat().st_mode & 0o777 for p in path.iterdir()}
    assert modes == {"config.json": file_mode, "model.safetensors": file_mode, "train_state.pt": file_mode}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_loads_onto_the_gpu_and_restores_cuda_streams(tmp_path):
    state = rng_state()
    expected = torch.rand(3, device="cuda")
    path = save(tmp_path / "ckpt", train_state={"rng": state})  # make_model() reseeds every stream
    model = load_model(path, map_location="cuda")
    assert all(p.is_cuda for p in model.parameters()) and model.head.weight is model.embed.weight
    set_rng_state(load_train_state(path, map_location="cuda")["rng"])
    assert torch.equal(torch.rand(3, device="cuda"), expected)

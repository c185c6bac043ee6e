"""What every script does around the library: compose the config (one-line errors), make the run dir, save the
resolved config, and turn a UserError into one `error:` line with exit status 2.

    @cli.main("train_tokenizer")
    def main(run: TrainTokenizerRun) -> None:
        train_tokenizer(run, *cli.make_run_dir(run))

Hydra lives here, in config.py and in scripts/; the library takes the typed dataclasses.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from vqgpt.config import CONFIG_DIR, check_known_keys, register_configs, to_object
from vqgpt.errors import UserError

# Keys renamed since a release: the old name is refused, naming the new one.
RENAMED_KEYS = {"sample_and_save_freq": "sample_every"}  # it only ever drew pictures (saving: checkpoint_every)

# Scripts whose experiments are recipes of one stage: `experiment=` takes only names with this prefix.
EXPERIMENT_STAGE = {"train_tokenizer": "tokenizer_", "train_gpt": "gpt_"}


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn a UserError into one `error: ...` line on stderr and exit status 2 (no traceback wall); an
    interrupted run says `interrupted: ...` and exits 128 + the signal number."""
    try:
        yield
    except UserError as e:
        if _launched_rank() == 0:  # under torchrun every process has it: say it once
            print(f"{e.label}: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:  # Ctrl-C outside a training loop (which checkpoints first): one line, not a traceback
        print("interrupted: Ctrl-C; what was already written stays, nothing more is", file=sys.stderr)
        sys.exit(130)


def main(config_name: str, precheck: Callable[[Any], None] | None = None
         ) -> Callable[[Callable[[Any], Any]], Callable[[], None]]:
    """Decorator for a script's entry point `fn(run)`, which gets the typed run config (a dataclass).
    `precheck(run)`: the script's own checks that need no model weights (values, config.json files), run on the
    composed config before Hydra creates the run dir, so a refused command leaves nothing behind."""

    def decorate(fn: Callable[[Any], Any]) -> Callable[[], None]:
        import hydra

        def body(cfg: DictConfig) -> None:
            with user_errors():
                fn(to_object(cfg))

        hydra_main = hydra.main(config_path=str(CONFIG_DIR), config_name=config_name, version_base="1.3")(body)

        @functools.wraps(fn)
        def entry() -> None:
            console_logging()
            register_configs()
            if any(a in ("--help", "-h") for a in sys.argv[1:]):
                with user_errors():
                    print(help_text(config_name, [a for a in sys.argv[1:] if not a.startswith("-")]))
                return
            with user_errors():
                run_dir = check_command_line(config_name, sys.argv[1:], precheck)
                if int(os.environ.get("WORLD_SIZE", "1")) > 1:
                    share_run_dir(run_dir)
            hydra_main()

        return entry

    return decorate


def console_logging() -> None:
    """The library logs (`logging.getLogger("vqgpt...")`); a script shows its INFO lines on stdout as they are,
    and its warnings as `warning: ...` on stderr, without Hydra's timestamped format."""
    import logging

    logger = logging.getLogger("vqgpt")
    if logger.handlers:
        return
    info = logging.StreamHandler(sys.stdout)
    info.addFilter(lambda record: record.levelno < logging.WARNING)
    warning = logging.StreamHandler(sys.stderr)
    warning.setLevel(logging.WARNING)
    warning.setFormatter(logging.Formatter("warning: %(message)s"))
    for handler in (info, warning):
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # not again through Hydra's root handlers


def _launched_rank() -> int:
    """This process's rank as torchrun set it (0 when not launched by torchrun), read before torch is imported."""
    return int(os.environ.get("RANK", "0"))


def share_run_dir(run_dir: Path | None) -> None:
    """Under torchrun every process composes the config, and `${now:...}` differs by the second between them:
    all take rank 0's run dir, and only rank 0 writes Hydra's files there."""
    from vqgpt.train.distributed import broadcast_object, init_distributed, rank

    init_distributed()
    shared = broadcast_object(str(run_dir) if run_dir is not None else None)
    if shared is not None:
        sys.argv.append(f"hydra.run.dir={shared}")
    if rank() != 0:
        sys.argv.append("hydra.output_subdir=null")


def make_run_dir(run: Any) -> tuple[Path, dict[str, Any]]:
    """Create the run's out_dir (inside Hydra's run dir when relative), write its resolved `config.yaml` (rank 0
    under torchrun); returns (out_dir, the config as a plain dict for the logger)."""
    out_dir = resolve_out_dir(run.out_dir)
    config = OmegaConf.to_container(OmegaConf.structured(run))
    if _launched_rank() == 0:
        (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(config))
    return out_dir, config  # type: ignore[return-value]


def check_command_line(config_name: str, args: list[str],
                       precheck: Callable[[Any], None] | None = None) -> Path | None:
    """Compose the config once before Hydra does, so a bad override is one UserError line, not Hydra's
    12-30 lines, and nothing is created; also refuse another stage's experiment, a key added with `+` that the
    schema lacks, and a run dir that cannot be created."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    if any(a.startswith("-") for a in args):  # --help, --cfg, -m ...: Hydra's own modes
        return None
    prefix = EXPERIMENT_STAGE.get(config_name)
    for arg in args:
        name = arg.split("=", 1)[1] if arg.startswith("experiment=") else None
        if prefix and name and not name.startswith(prefix):
            owner = next((f" (a {script} experiment: python scripts/{script}.py experiment={name})"
                          for script, p in EXPERIMENT_STAGE.items() if name.startswith(p)), "")
            raise UserError(f"experiment={name} is not a {config_name} experiment{owner}; {config_name} takes one "
                            f"of: {', '.join(experiments(prefix))}")
    _check_syntax(args)
    try:
        with initialize_config_dir(str(CONFIG_DIR), version_base="1.3", job_name=config_name):
            cfg = compose(config_name, overrides=args, return_hydra_config=True)
    except Exception as e:  # Hydra's and OmegaConf's errors have no common base worth naming
        raise UserError(_compose_error(e, config_name)) from None
    HydraConfig.instance().set_config(cfg)
    _check_added_keys(cfg)
    if precheck is not None:
        job = cfg.copy()
        with open_dict(job):
            del job["hydra"]
        precheck(to_object(job))
    try:
        run_dir = Path(str(cfg.hydra.run.dir))
    except Exception:  # an interpolation only a real run resolves: Hydra reports it itself
        return None
    _check_creatable(run_dir, "hydra.run.dir")
    return run_dir


def _check_syntax(args: list[str]) -> None:
    """Each override parsed alone, so that a value the shell split at a space, or one with characters Hydra's
    grammar reads as syntax (`!`, `#`, `;`, quotes, brackets), is named with the quoting that fixes it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for i, arg in enumerate(args):
        try:
            parser.parse_overrides([arg])
        except Exception:  # Hydra's OverrideParseException, or the ANTLR lexer's own
            key, eq, value = arg.partition("=")
            before = args[i - 1] if i else ""
            if not eq and "=" in before:
                raise UserError(f"{arg!r} is not key=value: the shell split `{before} {arg}` at a space; quote the "
                                f"whole override: '{before} {arg}'") from None
            if not eq:
                raise UserError(f"{arg!r} is not key=value; write key=value, e.g. trainer.max_steps=100 (`--help` "
                                "lists every key)") from None
            inner = value.replace("\\", "\\\\").replace('"', '\\"')
            quoted = f"'{key}=\"{inner}\"'" if "'" not in value else f'"{key}=\\"{inner}\\""'  # for the shell
            raise UserError(f"{arg}: the value holds characters Hydra's override grammar reads as syntax; quote it for "
                            f"Hydra inside the shell's quotes: {quoted}") from None


def _check_added_keys(cfg: DictConfig) -> None:
    """A misspelt key added with `+key=value` (which Hydra lets through) fails here, before any run dir."""
    run = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    check_known_keys(run)


def script_groups(config_name: str) -> dict[str, list[str]]:
    """The config groups `config_name` takes and their options: those under one of its schema's keys (train_gpt.py
    has no tokenizer group), without the `*_schema` entries, and experiments of its own stage only."""
    import dataclasses

    from vqgpt import config

    keys = {f.name for f in dataclasses.fields(config.SCHEMAS[f"{config_name}_schema"])}
    groups = {}
    for folder in sorted(p for p in CONFIG_DIR.rglob("*") if p.is_dir()):
        group = folder.relative_to(CONFIG_DIR).as_posix()
        options = sorted(p.stem for p in folder.glob("*.yaml"))
        if group == "experiment":
            prefix = EXPERIMENT_STAGE.get(config_name)
            options = experiments(prefix) if prefix else []
        elif group.split("/")[0] not in keys:
            continue
        if options:
            groups[group] = options
    return groups


def help_text(config_name: str, overrides: list[str]) -> str:
    """`--help`: the groups this script takes, then its composed config (with the overrides given)."""
    from hydra import compose, initialize_config_dir

    _check_syntax(overrides)
    try:
        with initialize_config_dir(str(CONFIG_DIR), version_base="1.3", job_name=config_name):
            cfg = compose(config_name, overrides=overrides)
    except Exception as e:
        raise UserError(_compose_error(e, config_name)) from None
    groups = "\n".join(f"{group}: {', '.join(options)}" for group, options in script_groups(config_name).items())
    groups = groups or "(none: every option below is a key=value)"
    return (f"python scripts/{config_name}.py [group=option ...] [key=value ...]\n\n== Configuration groups ==\n"
            f"{groups}\n\n== Config ==\n{OmegaConf.to_yaml(cfg)}")


def experiments(prefix: str) -> list[str]:
    """The experiment files of one stage, by name."""
    return sorted(p.stem for p in (CONFIG_DIR / "experiment").glob(f"{prefix}*.yaml"))


def _compose_error(e: Exception, config_name: str) -> str:
    """Hydra's multi-line composition error as one line naming the problem and the fix."""
    text = str(e)
    missing = re.search(r"Could not find '([^']+)/([^'/]+)'", text)
    if missing:
        group, option = missing[1], missing[2]
        options = sorted(getattr(e, "options", None) or re.findall(r"^\t(\S+)$", text, re.M))
        options = [o for o in options if not o.endswith("_schema")]  # the typed schemas, not choices
        if group == "experiment" and config_name in EXPERIMENT_STAGE:
            options = [o for o in options if o.startswith(EXPERIMENT_STAGE[config_name])]
        own = " (or dataset=folder dataset.root=<dir> for a folder of your own images)" if group == "dataset" else ""
        return f"{group}={option} is unknown; choose one of: {', '.join(options)}{own}"
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    first = lines[0] if lines else type(e).__name__
    in_file = re.match(r"In '([^']+)': ConfigKeyError", first)
    unknown = re.search(r"Key '([^']+)' not in '([^']+)'\s+full_key: (\S+)", text)
    if in_file and unknown:  # a config file (an experiment) sets a key the chosen schema lacks
        return f"configs/{in_file[1]}.yaml sets it: " + _unknown_key(unknown[3], unknown[1], unknown[2])
    if first.startswith("Error parsing override"):
        detail = f": {lines[1]}" if len(lines) > 1 and not lines[1].startswith("See ") else ""
        return (f"{first}{detail}; write key=value, e.g. trainer.max_steps=100 (`--help` lists every key; "
                "quote values with spaces or brackets)")
    cause = e.__cause__
    why = str(cause).strip().splitlines()[0] if cause is not None and str(cause).strip() else ""
    key = getattr(cause, "full_key", None) or ""
    unknown = re.match(r"Key '([^']+)' not in '([^']+)'", why)
    if unknown:
        return _unknown_key(key or unknown[1], unknown[1], unknown[2])
    merging = re.match(r"Error merging override (.+)", first)
    if merging and why:
        return f"{merging[1]}: {_type_problem(why)} (`--help` shows every key with its default)"
    if why:
        return f"{first}: {why}"
    return f"{first} (see `--help` for the config groups and keys)"


def _unknown_key(full_key: str, key: str, schema_name: str) -> str:
    """`trainer.lrr` -> a line with the close match, the schema's keys, or the group option that has the key."""
    import dataclasses
    import difflib

    from vqgpt import config

    schema = getattr(config, schema_name, None)
    known = sorted(f.name for f in dataclasses.fields(schema)) if dataclasses.is_dataclass(schema) else []
    parent = full_key[: -len(key)]
    for group, schemas in config.group_schemas().items():  # a key of another implementation: name its option
        if schema not in schemas.values():
            continue
        owners = [n.removesuffix("_schema") for n, other in schemas.items()
                  if other is not schema and key in {f.name for f in dataclasses.fields(other)}]
        if owners:
            return (f"{full_key} is not a {schema_name} key: {key} belongs to {group}={owners[0]}; choose that with "
                    f"{group}={owners[0]}, or drop {full_key}")
    if RENAMED_KEYS.get(key) in known:
        return f"{full_key} is now {parent}{RENAMED_KEYS[key]}; use that name"
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean {parent}{close[0]}? " if close else ""
    return f"{full_key} is not a config key; {hint}{schema_name} has: {', '.join(known)}"


def _type_problem(why: str) -> str:
    """OmegaConf's type complaint, in the words of the value the user typed."""
    value = re.match(r"Value '(.*)' of type '\w+' could not be converted to (\w+)", why)
    if value:
        kind = {"Integer": "an integer", "Float": "a number", "Boolean": "true or false"}.get(value[2], value[2])
        return f"'{value[1]}' is not {kind}"
    value = re.match(r"Value '(.*)' is not a valid bool", why)
    if value:
        return f"'{value[1]}' is not true or false"
    if "is not a ListConfig, list or tuple" in why:
        return "a list is expected, e.g. [1,2]"
    return why


def _check_creatable(path: Path, key: str) -> None:
    """UserError unless `path` is a directory or could be made one (its first existing parent is a writable
    directory)."""
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if probe == path and path.is_dir() and os.access(path, os.W_OK):
        return
    if not probe.is_dir():
        raise UserError(f"{key}={path} cannot be created: {probe} is a file; pick another directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"{key}={path} cannot be created: no write permission in {probe}; pick another directory")


def given_keys(prefix: str) -> set[str]:
    """The keys under `prefix` that this run's command line set (`sampling.temperature=0.9` -> "temperature");
    empty outside a Hydra run."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return set()
    keys = (o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task)
    return {k.removeprefix(prefix) for k in keys if k.startswith(prefix)}


def hydra_run_dir() -> Path:
    """The current Hydra run dir (where outputs and the resolved config go)."""
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def resolve_out_dir(out_dir: str) -> Path:
    """`out_dir` as given when absolute, else inside Hydra's run dir; created if missing."""
    path = Path(out_dir)
    if not path.is_absolute():
        path = hydra_run_dir() / path
    _check_creatable(path, "out_dir")
    path.mkdir(parents=True, exist_ok=True)
    return path

"""Every script command shown in README.md and docs/ composes, with its placeholders filled (`...`, `<dir>`,
`$VAE` become a dummy value; `[key=value]` is an optional part, kept): the docs cannot drift from the configs."""

from __future__ import annotations

import re
import shlex

import pytest
from conftest import ROOT

from vqgpt.cli import check_command_line
from vqgpt.config import CONFIG_DIR, register_configs

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def shell_lines(text: str) -> list[str]:
    """The commands of every ```bash block, continuation lines joined, comments dropped."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        block = re.sub(r"\\\n\s*", " ", block)
        for line in block.splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line).strip()
            if line:
                lines.append(line)
    return lines


def script_commands() -> list[tuple[str, str, list[str]]]:
    """(page, script, overrides) of every `python scripts/<name>.py ...` (or torchrun) line with a Hydra config."""
    found = []
    for page in PAGES:
        for line in shell_lines(page.read_text()):
            match = re.search(r"scripts/(\w+)\.py(.*)$", line)
            if not match or not (CONFIG_DIR / f"{match[1]}.yaml").is_file():
                continue
            words = shlex.split(re.sub(r"\$\w+|<[^>]*>", "x", match[2]).split("&&")[0])
            if any(word.startswith("-") for word in words):  # --help, --cfg job: Hydra's own modes
                continue
            args = []
            for word in words:
                if word in ("...", "[...]"):
                    continue
                if word.startswith("[") and word.endswith("]") and "=" in word:  # an optional part
                    word = word[1:-1]
                key, _, value = word.partition("=")
                if "|" in value and not value.startswith(("[", "'", '"')):  # one of several choices: the first
                    word = f"{key}={value.split('|')[0]}"
                args.append(word.replace("...", "x"))
            found.append((page.name, match[1], args))
    return found


COMMANDS = script_commands()


def test_the_pages_show_commands_of_every_script():
    assert {script for _, script, _ in COMMANDS} >= {"train_tokenizer", "train_gpt", "sample", "evaluate",
                                                     "classify", "train_classifier", "inspect_data"}


@pytest.mark.parametrize(("page", "script", "args"), COMMANDS,
                         ids=[f"{page}:{script}:{' '.join(args)[:60]}" for page, script, args in COMMANDS])
def test_every_command_in_the_docs_composes(page, script, args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # run dirs are only checked for being creatable, here
    register_configs()
    check_command_line(script, args)

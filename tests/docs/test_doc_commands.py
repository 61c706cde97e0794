"""Every example command in README.md and docs/*.md still means what the page says.

Each line of a fenced `sh` block is checked by what it calls: a `finetune-job` (or `python -m job`)
command is parsed by the real click command tree, so a renamed or removed option or command fails
here (running each one for real is what the rest of the suite does, command by command); a `make`
target must exist in the Makefile; a path under k8s/, job/, benchmarks/ or docker/ must exist; `kubectl
apply -k DIR` must name an overlay that renders (tests/deploy/test_k8s.py validates what it renders).
"""

from __future__ import annotations

import re
import shlex
import warnings

import click
import pytest

from conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"```(?:sh|bash|console)\n(.*?)```", re.S)
_ENV = re.compile(r"^[A-Z_][A-Z0-9_]*=")


def commands() -> list[tuple[str, str]]:
    """(page:line, command) for every shell line of every page, continuation lines joined."""
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for block in _BLOCK.finditer(text):
            start = text[: block.start()].count("\n") + 2
            joined, first = "", None
            for offset, line in enumerate(block.group(1).splitlines()):
                first = first if joined else start + offset
                joined += line.rstrip("\\").rstrip() + " " if line.rstrip().endswith("\\") else line
                if line.rstrip().endswith("\\"):
                    continue
                command = joined.split(" #")[0].strip() if not joined.lstrip().startswith("#") else ""
                joined = ""
                if command:
                    found.append((f"{page.relative_to(ROOT)}:{first}", command))
    return found


def _words(command: str) -> list[str]:
    words = shlex.split(command.replace("$(", "(").replace("$", ""))
    while words and _ENV.match(words[0]):
        words.pop(0)
    return words


def _check_finetune_job(args: list[str]) -> None:
    from job.cli.root import cli

    with cli.make_context("finetune-job", list(args), resilient_parsing=False) as ctx:
        with warnings.catch_warnings():  # click 8.2 deprecates the attribute that holds the command's name
            warnings.simplefilter("ignore", DeprecationWarning)
            remaining = [*ctx.protected_args, *ctx.args]
        if not remaining:
            return
        name, rest = remaining[0], remaining[1:]
        command = cli.get_command(ctx, name)
        assert command is not None, f"no command {name!r}"
        command.make_context(name, rest, parent=ctx)


def _make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([a-z][\w-]*):", text, re.M))


@pytest.mark.parametrize("where,command", commands(), ids=[w for w, _ in commands()])
def test_example_command(where, command):
    for part in re.split(r"\s*(?:&&|\|\||;|\|)\s*", command):
        words = _words(part)
        if not words:
            continue
        if words[0] == "finetune-job" or words[:3] == ["python", "-m", "job"]:
            args = words[1:] if words[0] == "finetune-job" else words[3:]
            try:
                _check_finetune_job(args)
            except click.exceptions.Exit:
                pass  # --help / --version
            except click.UsageError as exc:
                pytest.fail(f"{where}: {part!r}: {exc.format_message()}")
        elif words[0] == "make":
            for target in (w for w in words[1:] if "=" not in w and not w.startswith("-")):
                assert target in _make_targets(), f"{where}: make {target}: no such target in the Makefile"
        for word in words:
            if re.match(r"^(k8s/|benchmarks/|docker/|tests/|job/.*\.(py|yaml)$)", word) and "*" not in word and "<" not in word:
                assert (ROOT / word.rstrip("/")).exists(), f"{where}: {word} does not exist"


def test_the_pages_have_commands():
    """The checker reads the pages (it can fail): the README's two first commands are found."""
    found = [command for where, command in commands() if where.startswith("README.md")]
    assert found[:2] == ["make run", "make test"]

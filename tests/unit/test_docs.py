"""The docs hold: every command's --help (subcommands included) has an example, every command appears in
README.md or docs/, every test docs/guarantees.md cites exists, and no link between the docs is dead."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from migrator.cli.app import COMMAND_MODULES, app, module_commands

REPO = Path(__file__).resolve().parents[2]
DOCS = sorted((REPO / "docs").glob("*.md"))
runner = CliRunner()


def _commands() -> list[tuple[str, ...]]:
    """Every command path, groups' subcommands included: ("backup",), ("cron", "install"), ..."""
    out = []
    for name, module in COMMAND_MODULES.items():
        command = module_commands(module)[name]
        subs = getattr(command, "commands", None)
        if subs:
            out += [(name, sub) for sub, c in subs.items() if not c.hidden]
        else:
            out.append((name,))
    return out


@cache
def _all_docs_text() -> str:
    return "\n".join(p.read_text() for p in [REPO / "README.md", *DOCS])


@pytest.mark.parametrize("path", _commands(), ids=" ".join)
def test_every_command_and_subcommand_help_has_an_example(path):
    result = runner.invoke(app, [*path, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "Example" in result.output and f"migrator {' '.join(path)}" in result.output


@pytest.mark.parametrize("path", _commands(), ids=" ".join)
def test_every_command_appears_in_the_docs(path):
    # `migrator a b`, or one of a list: `migrator start\|stop\|restart`, `migrator cron install\|show\|remove`
    one_of = r"(?:[\w-]+\\?\|)*"
    head = "migrator " + "".join(f"{one_of}{re.escape(word)} " for word in path[:-1])
    assert re.search(rf"{head}{one_of}{re.escape(path[-1])}(?![\w-])", _all_docs_text()), " ".join(path)


def _test_names(file: Path) -> set[str]:
    tree = ast.parse(file.read_text())
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)}


def _cited_tests() -> list[tuple[str, str | None]]:
    """(test file as cited, test name or None) for every backticked citation in the guarantees table."""
    cited = []
    for line in (REPO / "docs" / "guarantees.md").read_text().splitlines():
        if not line.startswith("|"):
            continue
        last_file = None
        for ref in re.findall(r"`([^`]*(?:\.py|::\w+)[^`]*)`", line):
            file, _, name = ref.partition("::")
            if file:
                if not file.endswith(".py"):
                    continue
                last_file = file
            if last_file is None:
                continue
            cited.append((last_file, name.split("[")[0] or None))
    return cited


def _resolve(cited: str) -> Path:
    if "/" in cited:
        return REPO / cited
    found = list((REPO / "tests").rglob(cited))
    assert len(found) == 1, f"{cited}: {found}"
    return found[0]


def test_the_guarantees_table_cites_tests():
    assert len(_cited_tests()) > 30


@pytest.mark.parametrize("cited", _cited_tests(), ids=lambda c: f"{c[0]}::{c[1]}")
def test_every_test_the_guarantees_cite_exists(cited):
    file, name = cited
    path = _resolve(file)
    assert path.is_file(), file
    if name is not None:
        assert name in _test_names(path), f"{file}::{name}"


@pytest.mark.parametrize("doc", [REPO / "README.md", *DOCS], ids=lambda p: p.name)
def test_links_between_the_docs_resolve(doc):
    dead = []
    for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
        if target.startswith(("http://", "https://", "mailto:", "#")):
            continue
        if not (doc.parent / target.split("#")[0]).exists():
            dead.append(target)
    assert dead == []


def test_typer_is_what_the_walk_expects():
    """_commands reads click's tree: a group answers .commands, a plain command does not."""
    assert isinstance(module_commands("ops_cmds")["cron"], typer.core.TyperGroup)
    assert ("cron", "install") in _commands() and ("backup",) in _commands()

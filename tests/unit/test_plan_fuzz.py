"""Hostile and malformed plans (issue 8): property-based fuzzing plus hand-written injection cases.

Whatever the input, validation either accepts a plan or raises PlanInvalid (exit 3) whose every detail
line names a JSON path; it never crashes, never hangs, and no plan value ever reaches a shell."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from migrator.cli.app import app
from migrator.errors import PlanInvalid
from migrator.plan import validate_files

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
GOOD = json.loads((EXAMPLES / "demo-plan.json").read_text())
# A JSON path: (root) | name | [index] | ["quoted key"], then .name | [index] | ["quoted key"] segments; then
# ": " and the problem.
SEGMENT = r'(\.[A-Za-z_][\w-]*|\[\d+\]|\["(?:[^"\\\n]|\\.)*"\])'
PATH_LINE = re.compile(rf'^(\(root\)|\(secrets\){SEGMENT}*|[A-Za-z_][\w-]*{SEGMENT}*|(\[\d+\]|\[".*?"\]){SEGMENT}*): ')

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats(allow_nan=False)
    | st.text(max_size=80),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=20), children, max_size=5),
    max_leaves=30,
)
NASTY = ["; rm -rf /", "$(reboot)", "`id`", "a\nb", "../../etc", "/etc/passwd", "\u202eevil", "dв", "", " ",
         "x" * 5000, "\x00", "*", "-rf", "--privileged", "%s%n", "${HOME}", "|| true"]


def _paths(doc, prefix=()):
    """Every (path tuple) into a JSON document."""
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, prefix + (i,))


ALL_PATHS = [p for p in _paths(GOOD) if p]


def _set(doc, path, value):
    node = doc
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value


def check_outcome(tmp_path: Path, doc) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(doc))
    secrets = tmp_path / "secrets.json"
    secrets.write_text(json.dumps({"db_password": "s"}))
    secrets.chmod(0o600)
    try:
        validate_files(plan, secrets)
    except PlanInvalid as exc:
        assert exc.exit_code == 3 and exc.details, exc.message
        for line in exc.details:
            assert PATH_LINE.match(line), line


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=json_values)
def test_arbitrary_json_never_crashes(tmp_path, doc):
    check_outcome(tmp_path, doc)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(ALL_PATHS), value=json_values | st.sampled_from(NASTY))
def test_mutated_plans_are_accepted_or_rejected_with_a_path(tmp_path, path, value):
    doc = copy.deepcopy(GOOD)
    doc["vsn"]["data_root"] = str(tmp_path / "data")
    _set(doc, path, value)
    check_outcome(tmp_path, doc)


@pytest.mark.parametrize("field", ["name", "image"])
@pytest.mark.parametrize("nasty", NASTY)
def test_injection_in_names_and_images_is_refused(tmp_path, field, nasty):
    doc = copy.deepcopy(GOOD)
    doc["vsn"]["data_root"] = str(tmp_path / "data")
    doc["services"][0][field] = nasty
    with pytest.raises(PlanInvalid) as info:
        validate_files(_write(tmp_path, doc), _secrets(tmp_path))
    assert any(d.startswith(f"services[0].{field}") or d.startswith("services[0]") for d in info.value.details)


def test_command_and_env_values_stay_data_never_shell(tmp_path):
    """Commands are argv lists and env values are opaque strings: they validate, and nothing in migrator
    hands them to a shell (see test_no_shell_true_anywhere)."""
    doc = copy.deepcopy(GOOD)
    doc["vsn"]["data_root"] = str(tmp_path / "data")
    doc["services"][0]["command"] = ["sh", "-c", "echo $(id); rm -rf /"]
    doc["services"][0]["env"] = {"X": "; rm -rf / $(reboot) `id`\nINJECTED=1"}
    plan, _ = validate_files(_write(tmp_path, doc), _secrets(tmp_path))
    assert plan.services[0].command == ("sh", "-c", "echo $(id); rm -rf /")


def test_no_shell_true_anywhere():
    root = Path(__file__).resolve().parents[2] / "migrator"
    offenders = [str(p) for p in root.rglob("*.py") if re.search(r"shell\s*=\s*True", p.read_text())]
    assert offenders == []
    # os.system / os.popen interpret a shell line too.
    offenders = [str(p) for p in root.rglob("*.py") if re.search(r"os\.(system|popen)\(", p.read_text())]
    assert offenders == []


def test_cli_never_shows_a_traceback_for_hostile_plans(tmp_path):
    runner = CliRunner()
    for doc in ([], "string", {"version": 1, "vsn": {"name": "$(x)"}}, {"version": 1e308}):
        plan = tmp_path / "p.json"
        plan.write_text(json.dumps(doc))
        result = runner.invoke(app, ["validate", str(plan), "--json"])
        assert result.exit_code == 3
        assert "Traceback" not in result.output
        assert json.loads(result.stdout)["exit_code"] == 3


def _write(tmp_path, doc):
    p = tmp_path / "plan.json"
    p.write_text(json.dumps(doc))
    return p


def _secrets(tmp_path):
    p = tmp_path / "secrets.json"
    p.write_text(json.dumps({"db_password": "s"}))
    p.chmod(0o600)
    return p

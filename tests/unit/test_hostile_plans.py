"""Hostile and careless plans and secrets files (issue 21, items 1-5), through `migrator validate`: exit 3
with the JSON path of each problem, never exit 1 or a traceback, and never a secret's value."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from migrator.cli.app import app

runner = CliRunner()


def _validate(tmp_path: Path, plan: str | dict, secrets: Path | None = None) -> tuple[int, dict, str]:
    path = tmp_path / "plan.json"
    path.write_text(plan if isinstance(plan, str) else json.dumps(plan))
    args = ["validate", str(path), "--json"] + (["--secrets", str(secrets)] if secrets else [])
    result = runner.invoke(app, args)
    return result.exit_code, json.loads(result.stdout), result.output


def _secrets(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "secrets.json"
    path.write_text(text)
    path.chmod(0o600)
    return path


# -- 1. no secret value in an error -----------------------------------------------------------------------

SECRET = "hunter2-" + "Z" * 70_000  # longer than the schema's 64 KiB


@pytest.mark.parametrize("text", [
    json.dumps({"db_password": SECRET, "smtp_pw": "x"}),
    json.dumps({"db_password": ["hunter2-in-a-list"], "smtp_pw": "x"}),
    json.dumps({"db_password": {"nested": "hunter2-in-an-object"}, "smtp_pw": "x"}),
    json.dumps(["hunter2-not-an-object"]),
    json.dumps({f"k{i}": "hunter2-many" for i in range(1100)}),
], ids=["too long", "a list", "an object", "root not an object", "too many keys"])
def test_schema_errors_on_secrets_never_print_the_value(tmp_path, good, text):
    code, out, output = _validate(tmp_path, good, _secrets(tmp_path, text))
    assert code == 3, output
    assert "hunter2" not in output
    assert out["details"] and all(d.startswith("(secrets)") for d in out["details"]), out["details"]
    if "db_password" in text and "hunter2-many" not in text:
        assert any(d.startswith("(secrets).db_password:") for d in out["details"]), out["details"]


# -- 2. deep nesting and huge integers: exit 3, not 1 ------------------------------------------------------

DEEP = "[" * 100_000 + "]" * 100_000
HUGE = "9" * 5000


@pytest.mark.parametrize("where", ["plan", "secrets"])
@pytest.mark.parametrize("doc", [DEEP, '{"version": ' + HUGE + "}", '{"a": ' + DEEP + "}"],
                         ids=["deep", "5000 digits", "deep inside"])
def test_deep_and_huge_documents_exit_3(tmp_path, good, secrets_file, where, doc):
    if where == "plan":
        code, out, output = _validate(tmp_path, doc)
    else:
        code, out, output = _validate(tmp_path, good, _secrets(tmp_path, doc))
    assert code == 3, output
    assert "Traceback" not in output and "unexpected" not in out["message"]
    assert "nested deeper" in out["details"][0] or "digits" in out["details"][0], out


# -- 3. NaN and Infinity refused -----------------------------------------------------------------------------

@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_nan_and_infinity_are_refused_with_their_path(tmp_path, good, secrets_file, constant):
    text = json.dumps(good).replace('"max_age_hours": 26', f'"max_age_hours": {constant}')
    assert constant in text
    code, out, output = _validate(tmp_path, text, secrets_file)
    assert code == 3, output
    assert any(d.startswith("backup.max_age_hours:") for d in out["details"]), out["details"]


def test_nan_in_secrets_is_refused(tmp_path, good):
    code, out, output = _validate(tmp_path, good, _secrets(tmp_path, '{"db_password": NaN, "smtp_pw": "x"}'))
    assert code == 3, output
    assert any(d.startswith("(secrets).db_password:") for d in out["details"]), out["details"]


# -- 4. values validate accepted that the product later fails to parse ----------------------------------------

def _at(raw: dict, path: str, value) -> dict:
    raw = copy.deepcopy(raw)
    *parents, last = path.split(".")
    node = raw
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    node[int(last) if last.isdigit() else last] = value
    return raw


MALFORMED = [
    ("data root //", "vsn.data_root", "//", "vsn.data_root"),
    ("data root ///", "vsn.data_root", "///", "vsn.data_root"),
    ("data root /./", "vsn.data_root", "/./", "vsn.data_root"),
    ("data root /.", "vsn.data_root", "/.", "vsn.data_root"),
    ("s3 with ..", "backup.targets", ["s3://bucket/../x"], "backup.targets[0]"),
    ("s3 ending in ..", "backup.targets", ["s3://bucket/a/.."], "backup.targets[0]"),
    ("ssh port 99999", "backup.targets", ["ssh://h:99999/srv/b"], "backup.targets[0]"),
    ("ssh port abc", "backup.targets", ["ssh://h:abc/srv/b"], "backup.targets[0]"),
    ("ssh port 0", "backup.targets", ["ssh://h:0/srv/b"], "backup.targets[0]"),
    ("subnet 300.1.2.3", "network_subnet", "300.1.2.3/24", "network_subnet"),
    ("minute 61", "backup.schedule", "61 5 * * *", "backup.schedule"),
    ("hour 99", "health.schedule", "0 99 * * *", "health.schedule"),
    ("six fields", "backup.schedule", "0 0 * * * *", "backup.schedule"),
    ("step 0", "backup.schedule", "*/0 * * * *", "backup.schedule"),
    ("month 13", "backup.schedule", "0 0 1 13 *", "backup.schedule"),
]


@pytest.mark.parametrize("label,path,value,where", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_values_fail_validate_with_their_path(tmp_path, good, secrets_file, label, path, value, where):
    code, out, output = _validate(tmp_path, _at(good, path, value), secrets_file)
    assert code == 3, output
    assert any(d.startswith(where + ":") for d in out["details"]), out["details"]


def test_tcp_socket_port_out_of_range(tmp_path, good, secrets_file):
    raw = _at(good, "vsn", {"name": "d", "engine": "docker", "socket": "tcp://h:99999", "data_root": "/srv/d",
                            "tls": {"ca_cert": "/c/ca", "client_cert": "/c/cert", "client_key": "/c/key"}})
    code, out, output = _validate(tmp_path, raw, secrets_file)
    assert code == 3, output
    assert any(d.startswith("vsn.socket:") for d in out["details"]), out["details"]


@pytest.mark.parametrize("path,value", [("backup.targets", ["s3://bucket/a/b", "ssh://u@h:2222/srv/b"]),
                                        ("network_subnet", "10.1.2.0/24"), ("backup.schedule", "*/15 1-5 * * 1,3")])
def test_good_values_still_pass(tmp_path, good, secrets_file, path, value):
    code, out, output = _validate(tmp_path, _at(good, path, value), secrets_file)
    assert code == 0, output


def test_validate_and_cron_agree(tmp_path, good, secrets_file):
    """Whatever `cron install` refuses as an expression, validate refuses first (and the reverse)."""
    from migrator.plan.checks import valid_cron_expression as valid_expression

    for expr in ["61 5 * * *", "0 0 31 2 *", "0 0 * * 7", "5-1 * * * *", "1,2,3 * * * *", "0-59/61 * * * *"]:
        code, _out, _ = _validate(tmp_path, _at(good, "backup.schedule", expr), secrets_file)
        assert (code == 0) == valid_expression(expr), expr


# -- 5. duplicate keys -----------------------------------------------------------------------------------------

def test_duplicate_key_in_plan_names_its_path(tmp_path, good, secrets_file):
    text = json.dumps(good).replace('"engine": "podman"', '"engine": "podman", "engine": "docker"')
    code, out, output = _validate(tmp_path, text, secrets_file)
    assert code == 3, output
    assert any(d.startswith("vsn.engine:") and "duplicate" in d for d in out["details"]), out["details"]


def test_duplicate_key_deep_in_plan(tmp_path, good, secrets_file):
    text = json.dumps(good).replace('"path": "/data"', '"path": "/data", "path": "/etc"')
    code, out, output = _validate(tmp_path, text, secrets_file)
    assert code == 3, output
    assert any(d.startswith("volumes[0].mounts[0].path:") for d in out["details"]), out["details"]


def test_duplicate_key_in_secrets(tmp_path, good):
    secrets = _secrets(tmp_path, '{"db_password": "hunter2-a", "smtp_pw": "x", "db_password": "hunter2-b"}')
    code, out, output = _validate(tmp_path, good, secrets)
    assert code == 3, output
    assert "hunter2" not in output
    assert any(d.startswith("(secrets).db_password:") and "duplicate" in d for d in out["details"]), out["details"]

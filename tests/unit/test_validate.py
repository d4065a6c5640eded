"""validate: a good plan passes; a broad table of bad plans each fails with exit 3 and the right JSON path."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from migrator.cli.app import app
from migrator.errors import PlanInvalid
from migrator.plan import validate_files
from migrator.plan.checks import dependency_cycle


def write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(raw))
    return path


def problems_of(tmp_path, raw, secrets) -> list[str]:
    with pytest.raises(PlanInvalid) as info:
        validate_files(write(tmp_path, raw), secrets)
    return info.value.details


def test_good_plan_passes(tmp_path, good, secrets_file):
    plan, secrets = validate_files(write(tmp_path, good), secrets_file)
    assert plan.vsn.name == "demo"
    assert [s.name for s in plan.enabled_services] == ["db", "web"]
    assert secrets.get("db_password") == "s3cr3t-value"
    assert "s3cr3t" not in repr(secrets)


def _set(path: str, value):
    def mutate(raw: dict) -> None:
        *parents, last = path.split(".")
        node = raw
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        if value is _DELETE:
            del node[int(last) if last.isdigit() else last]
        else:
            node[int(last) if last.isdigit() else last] = value
    return mutate


_DELETE = object()

BAD_PLANS = [
    ("missing vsn", _set("vsn", _DELETE), "(root)"),
    ("wrong version", _set("version", 2), "version"),
    ("engine unknown", _set("vsn.engine", "lxc"), "vsn.engine"),
    ("relative data root", _set("vsn.data_root", "data"), "vsn.data_root"),
    ("data root is /", _set("vsn.data_root", "/"), "vsn.data_root"),
    ("data root with ..", _set("vsn.data_root", "/srv/../etc"), "vsn.data_root"),
    ("unsafe volume name", _set("volumes.0.name", "../etc"), "volumes[0].name"),
    ("upper-case name", _set("volumes.0.name", "DB"), "volumes[0].name"),
    ("name with shell", _set("services.0.name", "db;rm -rf /"), "services[0].name"),
    ("name with newline", _set("services.0.name", "db\nx"), "services[0].name"),
    ("name ending in a newline", _set("services.0.name", "db\n"), "services[0].name"),
    ("vsn name ending in a newline", _set("vsn.name", "demo\n"), "vsn.name"),
    ("target ending in a newline", _set("backup.targets", ["file:///var/backups\n"]), "backup.targets[0]"),
    ("unicode look-alike name", _set("services.0.name", "dв"), "services[0].name"),
    ("duplicate name", _set("services.1.name", "db"), "services[1].name"),
    ("service named like a volume", _set("services.1.name", "webdata"), "services[1].name"),
    ("volumes_from unknown", _set("services.1.volumes_from", ["nope"]), "services[1].volumes_from[0]"),
    ("depends_on unknown", _set("services.1.depends_on", ["ghost"]), "services[1].depends_on[0]"),
    ("depends on itself", _set("services.0.depends_on", ["db"]), "services[0].depends_on[0]"),
    ("depends on disabled", _set("services.1.depends_on", ["admin"]), "services[1].depends_on[0]"),
    ("cycle", _set("services.0.depends_on", ["web"]), "services[0].depends_on"),
    ("port clash", _set("services.1.ports", [{"host": 18081, "container": 8080}]), "services[1].ports[0].host"),
    ("port out of range", _set("services.1.ports", [{"host": 70000, "container": 8080}]), "services[1].ports[0].host"),
    ("probe port unpublished", _set("services.1.health.port", 9999), "services[1].health.port"),
    ("cmd probe without command", _set("services.1.health", {"type": "cmd"}), "services[1].health"),
    ("probe type unknown", _set("services.1.health", {"type": "icmp"}), "services[1].health.type"),
    ("secret missing", _set("services.0.env_secrets", {"X": "not_there"}), "services[0].env_secrets.X"),
    ("env and secret same name", _set("services.0.env", {"DB_PASSWORD": "x"}), "services[0].env_secrets.DB_PASSWORD"),
    ("bad env name", _set("services.0.env", {"A-B": "x"}), "services[0].env"),
    ("command not a list", _set("services.0.command", "sh -c 'rm -rf /'"), "services[0].command"),
    ("max size too big", _set("volumes.0.max_size", "300G"), "volumes[0].max_size"),
    ("max size garbage", _set("volumes.0.max_size", "lots"), "volumes[0].max_size"),
    ("huge number", _set("volumes.0.max_size", 10**30), "volumes[0].max_size"),
    ("mount path relative", _set("volumes.0.mounts.0.path", "data"), "volumes[0].mounts[0].path"),
    ("mount path /", _set("volumes.0.mounts.0.path", "/"), "volumes[0].mounts[0].path"),
    ("mount path with ..", _set("volumes.0.mounts.0.path", "/data/../etc"), "volumes[0].mounts[0].path"),
    ("duplicate mount name", _set("volumes.0.mounts.1.name", "data"), "volumes[0].mounts[1].name"),
    ("mount name traversal", _set("volumes.0.mounts.0.name", ".."), "volumes[0].mounts[0].name"),
    ("no mounts", _set("volumes.0.mounts", []), "volumes[0].mounts"),
    ("unknown field", _set("services.0.privileged", True), "services[0]"),
    ("wrong type", _set("services.0.enabled", "yes"), "services[0].enabled"),
    ("quiesce unknown", _set("services.0.quiesce", "freeze"), "services[0].quiesce"),
    ("hook container unknown", _set("services.0.hooks", {"pre_backup": [{"command": ["sync"], "container": "zz"}]}),
     "services[0].hooks.pre_backup[0].container"),
    ("tcp socket without tls", _set("vsn", {"name": "d", "engine": "docker", "socket": "tcp://h:2376",
                                            "data_root": "/srv/d"}), "vsn.tls"),
    ("bad target", _set("backup.targets", ["ftp://x/y"]), "backup.targets[0]"),
    ("bad cron", _set("backup.schedule", "every day"), "backup.schedule"),
    ("bad email", _set("health.notify.email", "not-an-address"), "health.notify.email"),
    ("same mount path from two volumes", _set("services.1.volumes_from", ["webdata", "dbdata"]), None),
]


@pytest.mark.parametrize("label,mutate,path", BAD_PLANS, ids=[b[0] for b in BAD_PLANS])
def test_bad_plan_names_json_path(tmp_path, good, secrets_file, label, mutate, path):
    raw = copy.deepcopy(good)
    mutate(raw)
    if label == "same mount path from two volumes":
        raw["volumes"][1]["mounts"][0]["path"] = "/data"
        path = "services[1].volumes_from"
    problems = problems_of(tmp_path, raw, secrets_file)
    assert any(p.startswith(path + ":") or p.startswith(path + ".") or p.startswith(path + "[")
               for p in problems), problems


def test_every_problem_reported_not_just_first(tmp_path, good, secrets_file):
    raw = copy.deepcopy(good)
    raw["services"][1]["volumes_from"] = ["nope"]
    raw["services"][1]["depends_on"] = ["ghost"]
    raw["services"][0]["env_secrets"] = {"X": "absent"}
    problems = problems_of(tmp_path, raw, secrets_file)
    assert len(problems) >= 3, problems


def test_secret_reference_without_secrets_file(tmp_path, good):
    problems = problems_of(tmp_path, good, None)
    assert any(p.startswith("services[0].env_secrets.DB_PASSWORD:") for p in problems)


def test_secrets_file_must_be_0600(tmp_path, good, secrets_file):
    secrets_file.chmod(0o644)
    problems = problems_of(tmp_path, good, secrets_file)
    assert any("must be 0600" in p for p in problems)


def test_secrets_file_must_be_owned_by_caller(tmp_path, good, secrets_file):
    os.chown(secrets_file, 12345, 12345)
    problems = problems_of(tmp_path, good, secrets_file)
    assert any("owned by uid 12345" in p for p in problems)


def test_secrets_values_must_be_strings(tmp_path, good, secrets_file):
    secrets_file.write_text(json.dumps({"db_password": 5}))
    problems = problems_of(tmp_path, good, secrets_file)
    assert any(p.startswith("(secrets).db_password") for p in problems), problems


def test_data_dir_symlink_escape(tmp_path, good, secrets_file):
    root = Path(good["vsn"]["data_root"])
    (root / "dbdata").mkdir(parents=True)
    (root / "dbdata" / "data").symlink_to("/etc")
    problems = problems_of(tmp_path, good, secrets_file)
    assert any(p.startswith("volumes[0].mounts[0]:") and "symlink" in p for p in problems), problems


def test_volume_dir_symlink_escape(tmp_path, good, secrets_file):
    root = Path(good["vsn"]["data_root"])
    root.mkdir(parents=True)
    (root / "webdata").symlink_to(tmp_path)
    problems = problems_of(tmp_path, good, secrets_file)
    assert any(p.startswith("volumes[1].mounts[0]:") for p in problems), problems


def test_not_json_and_huge_file(tmp_path, secrets_file):
    bad = tmp_path / "bad.json"
    bad.write_text("{ not json")
    with pytest.raises(PlanInvalid, match="not valid JSON"):
        validate_files(bad, None)
    bad.write_bytes(b" " * (2 * 1024 * 1024))
    with pytest.raises(PlanInvalid, match="larger than"):
        validate_files(bad, None)


def test_cycle_finder():
    assert dependency_cycle([{"name": "a", "depends_on": ["b"]}, {"name": "b", "depends_on": ["c"]},
                             {"name": "c", "depends_on": ["a"]}]) == ["a", "b", "c", "a"]
    assert dependency_cycle([{"name": "a", "depends_on": ["b"]}, {"name": "b"}]) is None


def test_cli_exit_3_with_json_path(tmp_path, good, secrets_file):
    good["services"][1]["volumes_from"] = ["nope"]
    plan = write(tmp_path, good)
    result = CliRunner().invoke(app, ["validate", str(plan), "--secrets", str(secrets_file), "--json"])
    assert result.exit_code == 3
    out = json.loads(result.stdout)
    assert out["ok"] is False and out["exit_code"] == 3
    assert any(d.startswith("services[1].volumes_from[0]:") for d in out["details"])
    assert "s3cr3t" not in result.output


def test_cli_valid_plan_json(tmp_path, good, secrets_file):
    result = CliRunner().invoke(app, ["validate", str(write(tmp_path, good)), "--secrets", str(secrets_file), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["ok"] is True


def _with_events(good: dict) -> dict:
    raw = copy.deepcopy(good)
    raw["events"] = {"pings": [{"url_secret": "hc_url"}],
                     "webhooks": [{"url": "https://hooks.example/x"}, {"url_secret": "slack_url", "format": "slack"}]}
    return raw


def test_event_url_secrets_must_be_in_the_secrets_file(tmp_path, good, secrets_file):
    problems = problems_of(tmp_path, _with_events(good), secrets_file)
    assert any(p.startswith("events.pings[0].url_secret: secret 'hc_url' is not in") for p in problems), problems
    assert any(p.startswith("events.webhooks[1].url_secret: secret 'slack_url'") for p in problems), problems
    assert not any(p.startswith("events.webhooks[0]") for p in problems)


def test_an_event_url_secret_that_is_no_url_is_named_by_its_key_never_shown(tmp_path, good, secrets_file):
    values = json.loads(secrets_file.read_text())
    values.update({"hc_url": "https://hc.example/ping/uuid-TOKEN1", "slack_url": "xoxb-TOKEN2 not a url"})
    secrets_file.write_text(json.dumps(values))
    problems = problems_of(tmp_path, _with_events(good), secrets_file)
    assert [p for p in problems if p.startswith("events.")] == [
        "events.webhooks[1].url_secret: secret 'slack_url' is not an http:// or https:// URL (one line, at most "
        "2048 characters)"]
    assert not any("TOKEN" in p for p in problems)


def test_event_url_secrets_that_are_urls_pass(tmp_path, good, secrets_file):
    values = json.loads(secrets_file.read_text())
    values.update({"hc_url": "https://hc.example/ping/u", "slack_url": "http://127.0.0.1:9/hook"})
    secrets_file.write_text(json.dumps(values))
    plan, _ = validate_files(write(tmp_path, _with_events(good)), secrets_file)
    assert plan.vsn.name == "demo"

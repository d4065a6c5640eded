"""Security properties (issue 8): secrets never appear in output, logs, the operation history, process
argv, snapshots or error messages; S3 credentials are never logged; modes of what holds them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.lab.plans import demo_plan, secrets_file
from tests.lab.vsn import write_json

SECRET = "Sup3r-s3cret-DB-pa55word-xyzzy"
AWS_SECRET = "aws-secret-key-never-logged-42"


def _all_bytes_under(root: Path) -> bytes:
    out = bytearray()
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            if path.is_file() and not path.is_symlink():
                try:
                    out += path.read_bytes()
                except OSError:
                    pass
    return bytes(out)


def test_secrets_never_leak(vsn, tmp_path, s3_bucket):
    secrets = secrets_file(tmp_path / "secrets.json", {"db_password": SECRET})
    raw = demo_plan(vsn, host=False)
    raw["backup"] = {"targets": [f"file://{tmp_path}/store", s3_bucket.url("sec")],
                     "s3": {"endpoint_url": s3_bucket.endpoint_url, "region": "us-east-1"}}
    plan = write_json(tmp_path / "plan.json", raw)
    env = {**vsn.env(), **{k: v for k, v in os.environ.items() if k.startswith("AWS_")},
           "AWS_SECRET_ACCESS_KEY": AWS_SECRET}
    outputs = []

    # Deploy in the background and watch every process's argv while it runs.
    proc = subprocess.Popen([*vsn.migrator_argv(), "deploy", str(plan), "--secrets", str(secrets), "--json"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen_in_argv = []
    while proc.poll() is None:
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    if SECRET.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                        seen_in_argv.append(pid)
                except OSError:
                    pass
    out, err = proc.communicate()
    assert proc.returncode == 0, err
    outputs += [out, err]
    assert seen_in_argv == []

    # The secret did reach the container (through the engine API, as environment).
    code = vsn.podman("exec", "db", "sh", "-c", "echo $DB_PASSWORD").stdout.strip()
    assert code == SECRET

    for args in (["status", "--json"], ["backup", "--json"], ["snapshots", "--json"], ["log", "--json"],
                 ["health", "--json"], ["verify", "latest", "--json"]):
        result = vsn.migrator(*args, env=env)
        if args[0] != "health":  # health may report the missing drill; everything else must succeed
            assert result.returncode == 0, (args, result.stderr)
        outputs += [result.stdout, result.stderr]
    # A failing deploy's error message and --debug traceback carry no secret either.
    bad = dict(raw, services=[dict(s, image="localhost/nope:1") if s["name"] == "web" else s for s in raw["services"]])
    write_json(tmp_path / "bad.json", bad)
    vsn.podman("stop", "-t", "1", "db", "web")
    failed = vsn.migrator("--debug", "deploy", str(tmp_path / "bad.json"), "--secrets", str(secrets), "--json", env=env)
    assert failed.returncode == 7
    outputs += [failed.stdout, failed.stderr]

    text = "\n".join(outputs)
    assert SECRET not in text and AWS_SECRET not in text
    state = _all_bytes_under(vsn.state_dir)  # plan copy, journal, history.sqlite, metrics, logs
    assert SECRET.encode() not in state and AWS_SECRET.encode() not in state
    assert SECRET.encode() not in _all_bytes_under(tmp_path / "store")  # plan.json holds references only
    for obj in s3_bucket.client().list_objects_v2(Bucket=s3_bucket.name).get("Contents", []):
        if obj["Key"].endswith(("plan.json", "manifest.json")):
            body = s3_bucket.client().get_object(Bucket=s3_bucket.name, Key=obj["Key"])["Body"].read()
            assert SECRET.encode() not in body
    assert (vsn.state_dir.stat().st_mode & 0o777) == 0o700


def test_world_readable_secrets_file_is_refused(vsn, tmp_path):
    secrets = secrets_file(tmp_path / "secrets.json", {"db_password": SECRET})
    secrets.chmod(0o644)
    plan = write_json(tmp_path / "plan.json", demo_plan(vsn, host=False))
    result = vsn.migrator("deploy", str(plan), "--secrets", str(secrets), "--json")
    assert result.returncode == 3
    assert "0600" in result.stderr and SECRET not in result.stdout + result.stderr
    assert vsn.containers() == {}

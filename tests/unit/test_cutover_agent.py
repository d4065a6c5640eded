"""The target's cut-over agent (move_target.cutover) driven through its framed stdin, with the plan,
engine and deploy replaced by fakes (the real ones run in tests/integration/test_move.py): it reports
`ready` before reading anything, extracts a stream into staging and answers its sha256 and fingerprint,
commits only on the source's word, and rolls back when it cannot tell the source the stack is healthy."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import pytest

from migrator.archive import write_archive
from migrator.archive.fingerprint import fingerprint
from migrator.errors import MigratorError
from migrator.ops import check, deploy, move_target, teardown
from migrator.remote import frames
from migrator.stack import topology as stack_mod
from migrator.state import registry


class Buf:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, b: bytes) -> None:
        self.data += b


@pytest.fixture
def agent_env(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGRATOR_STATE_DIR", str(tmp_path / "state"))
    (tmp_path / "state").mkdir()
    data_root = tmp_path / "data"
    plan = SimpleNamespace(vsn=SimpleNamespace(data_root=str(data_root)), host=None,
                           volumes=[SimpleNamespace(name="vol", image="img")], enabled_services=[])
    calls = []
    monkeypatch.setattr("migrator.plan.validate_files", lambda p, s: (plan, SimpleNamespace(path=s)))
    monkeypatch.setattr(check, "require", lambda p: calls.append("check"))
    monkeypatch.setattr(stack_mod.Stack, "for_plan", classmethod(
        lambda cls, p, report=None: SimpleNamespace(outer=SimpleNamespace(image_exists=lambda ref: True))))
    monkeypatch.setattr(deploy, "deploy", lambda p, s, report, checked: (
        calls.append(f"deploy checked={checked}"), SimpleNamespace(to_json=lambda: {"health": {"web": "ok"}}))[1])
    monkeypatch.setattr(teardown, "teardown", lambda p, verb: calls.append("teardown"))
    source = tmp_path / "source"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "file").write_text("moved")
    return SimpleNamespace(plan=plan, data_root=data_root, source=source, calls=calls)


def _stdin(env, *, commit: bool) -> tuple[bytes, str]:
    out = Buf()
    out.write(frames.encode_json({"cmd": "receive", "volume": "vol"}))
    sink = frames.DataWriter(out)
    stats = write_archive(env.source, [sink])
    sink.close()
    out.write(frames.encode_json({"cmd": "commit" if commit else "abort"}))
    return bytes(out.data), stats.sha256


def test_receive_commit_deploy_and_report(agent_env):
    raw, sha = _stdin(agent_env, commit=True)
    events = []
    result = move_target.cutover("plan.json", None, "vsn1", emit=events.append, confirm=events.append,
                                 stdin=io.BytesIO(raw))
    kinds = [e["event"] for e in events]
    assert kinds[0] == "ready" and kinds[1] == "received" and "committed" in kinds and kinds[-1] == "healthy"
    received = events[1]
    assert received["sha256"] == sha
    assert received["fingerprint"] == fingerprint(agent_env.source, content=False)
    assert (agent_env.data_root / "vol" / "sub" / "file").read_text() == "moved"  # committed
    assert agent_env.calls == ["check", "deploy checked=True"]
    assert result.committed == ["vol"]
    assert list(events[0]["steps"]) == ["prepare"]  # the steps before `ready`, then the rest in the reply
    assert list(result.steps) == ["waiting", "receive.vol", "fingerprint.vol", "commit", "deploy", "finish"]
    reply = result.to_json()  # the final JSON line the source reads: the deploy's result plus the move's
    assert {"committed", "kept_aside", "old_data", "steps", "secrets"} <= set(reply)
    assert set(reply) - {"committed", "kept_aside", "old_data", "steps", "secrets"} == set(result.deployed)
    assert (Path(move_target.state_dir()) / "moved-in.json").exists()


def test_abort_commits_nothing(agent_env):
    raw, _sha = _stdin(agent_env, commit=False)
    result = move_target.cutover("plan.json", None, "vsn1", emit=lambda e: None, stdin=io.BytesIO(raw))
    assert result.aborted and not (agent_env.data_root / "vol").exists()
    assert result.to_json() == {"committed": [], "aborted": True, "steps": result.steps}
    assert move_target.staging_dir(str(agent_env.data_root), "vol").is_dir()  # kept for a retry


def test_source_gone_before_commit_commits_nothing(agent_env):
    raw, _sha = _stdin(agent_env, commit=True)
    cut = raw[: raw.rindex(frames.encode_json({"cmd": "commit"}))]
    with pytest.raises(MigratorError, match="went away before the commit"):
        move_target.cutover("plan.json", None, "vsn1", emit=lambda e: None, stdin=io.BytesIO(cut))
    assert not (agent_env.data_root / "vol").exists()


def test_healthy_that_cannot_be_told_rolls_back(agent_env):
    raw, _sha = _stdin(agent_env, commit=True)

    def broken_pipe(event):
        raise BrokenPipeError(32, "Broken pipe")

    with pytest.raises(MigratorError, match="rolled back"):
        move_target.cutover("plan.json", None, "vsn1", emit=lambda e: None, confirm=broken_pipe,
                            stdin=io.BytesIO(raw))
    assert agent_env.calls[-1] == "teardown"
    assert not (Path(move_target.state_dir()) / "moved-in.json").exists()
    assert move_target.staging_dir(str(agent_env.data_root), "vol").is_dir()  # as before the commit


def _held_before(env) -> Path:
    old = env.data_root / "vol"
    old.mkdir(parents=True)
    (old / "file").write_text("held before")
    return old


@pytest.mark.parametrize("keep_old", [False, True])
def test_data_held_before_is_removed_once_healthy_unless_kept(agent_env, keep_old):
    """Issue 22, item 1: the data this VSN held is set aside for the rollback only."""
    _held_before(agent_env)
    raw, _sha = _stdin(agent_env, commit=True)
    result = move_target.cutover("plan.json", None, "vsn1", emit=lambda e: None, confirm=lambda e: None,
                                 stdin=io.BytesIO(raw), keep_old=keep_old)
    old = result.old_data
    assert old["kept"] is keep_old and [Path(p).name.split(".pre-move-")[0] for p in old["paths"]] == ["vol"]
    assert [str(p) for p in agent_env.data_root.glob("vol.pre-move-*")] == (old["paths"] if keep_old else [])
    assert (agent_env.data_root / "vol" / "sub" / "file").read_text() == "moved"


def test_a_failed_deploy_puts_the_data_held_before_back(agent_env, monkeypatch):
    from migrator.errors import DeployFailed

    def failing(p, s, report, checked):
        raise DeployFailed("port taken")

    monkeypatch.setattr(deploy, "deploy", failing)
    _held_before(agent_env)
    raw, _sha = _stdin(agent_env, commit=True)
    with pytest.raises(DeployFailed):
        move_target.cutover("plan.json", None, "vsn1", emit=lambda e: None, stdin=io.BytesIO(raw))
    assert (agent_env.data_root / "vol" / "file").read_text() == "held before"
    assert not list(agent_env.data_root.glob("vol.pre-move-*"))
    staged = move_target.staging_dir(str(agent_env.data_root), "vol")
    assert (staged / "sub" / "file").read_text() == "moved"


def _secrets_file(path: Path, values: dict, text: str | None = None) -> Path:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text if text is not None else json.dumps(values))
    path.chmod(0o600)
    return path


def test_a_move_back_keeps_the_operators_secrets_file(agent_env, tmp_path, monkeypatch):
    """Issue 22, item 10: this VSN ran the stack before (it remembers the operator's secrets file); the
    stack comes back with the same secrets, sent as a copy under <state dir>/incoming/. The operator's
    file stays the remembered one, so later edits of it count; different values keep the copy, named."""
    from migrator.state import deployed

    used = []
    monkeypatch.setattr(deploy, "deploy", lambda p, s, report, checked: (
        used.append(s.path), SimpleNamespace(to_json=lambda: {"health": {}}))[1])
    operator = _secrets_file(tmp_path / "etc" / "secrets.json", {}, '{\n  "db_password": "pw"\n}\n')
    deployed.record({"version": 1}, str(operator))
    deployed.forget()  # moved away, containerless
    incoming = _secrets_file(registry.INCOMING.path / "secrets.json",
                             {"db_password": "pw"})
    raw, _sha = _stdin(agent_env, commit=True)
    result = move_target.cutover("plan.json", str(incoming), "vsn1", emit=lambda e: None,
                                 confirm=lambda e: None, stdin=io.BytesIO(raw))
    assert used == [str(operator)] and result.secrets == {"path": str(operator), "copy": False}

    _secrets_file(operator, {"db_password": "edited meanwhile"})
    raw, _sha = _stdin(agent_env, commit=True)
    result = move_target.cutover("plan.json", str(incoming), "vsn1", emit=lambda e: None,
                                 confirm=lambda e: None, stdin=io.BytesIO(raw))
    assert used[-1] == str(incoming) and result.secrets == {"path": str(incoming), "copy": True}


def test_move_output_says_where_the_target_keeps_the_secrets(tmp_path, monkeypatch, good, secrets_file):
    import json

    from typer.testing import CliRunner

    from migrator.cli.app import app
    from migrator.ops import move
    from migrator.state import deployed

    monkeypatch.setenv("MIGRATOR_STATE_DIR", str(tmp_path / "state"))
    deployed.record(good, str(secrets_file))
    copy = "/var/lib/migrator/incoming/secrets.json"
    reply = {"target": "root@vsn2", "downtime_s": 1.0, "bytes_precopy": 1, "precopy_s": 1.0, "bytes_delta": 1,
             "source": "containerless", "installed": None, "target_secrets": {"path": copy, "copy": True}}
    monkeypatch.setattr(move, "move", lambda *a, **kw: reply)
    result = CliRunner().invoke(app, ["move", "--to", "root@vsn2"])
    assert result.exit_code == 0, result.output
    assert f"secrets on the target: {copy}" in result.stdout and "copy" in result.stdout
    reply["target_secrets"] = {"path": "/etc/migrator/secrets.json", "copy": False}
    result = CliRunner().invoke(app, ["move", "--to", "root@vsn2", "--json"])
    assert json.loads(result.stdout)["target_secrets"]["path"] == "/etc/migrator/secrets.json"


def test_info_and_receive_replies(tmp_path):
    info = move_target.info(str(tmp_path / "data")).to_json()
    assert set(info) == {"version", "euid", "hostname", "state_dir", "data_root", "free_bytes", "deployed_at"}
    assert info["data_root"] == str(tmp_path / "data") and info["free_bytes"] > 0
    received = move_target.Received("vol", "ab" * 32, 10, 1).to_json()
    assert received == {"volume": "vol", "sha256": "ab" * 32, "size": 10, "files": 1}

"""The target side of `migrator move`, run there over SSH as `migrator agent …`.

The whole cut-over runs in ONE process started before the source stops, so its start-up costs no
downtime. Input comes from another machine: archives go through restore's hostile-member-refusing
extraction and frames are length-capped. Steps: docs/move.md#the-target-side."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from migrator import __version__
from migrator.archive import extract_archive
from migrator.archive.fingerprint import fingerprint
from migrator.durable import fsync_dir, sync_filesystem
from migrator.errors import IntegrityError, MigratorError, UsageError
from migrator.jsonschemas import plan_pattern
from migrator.results import FieldsJson
from migrator.stack.datadirs import existing_ancestor
from migrator.stack.timing import StepTimer
from migrator.stack.topology import Stack
from migrator.state import deployed, registry
from migrator.state.files import write_json
from migrator.state.paths import state_dir

STAGING_SUFFIX = ".move-incoming"
# Where the source puts plan, secrets and the backup heartbeat (SFTP, 0600) under the target's state dir.


@dataclass(frozen=True)
class AgentInfo(FieldsJson):
    """`migrator agent info`: what the source checks before a move."""
    version: str
    euid: int
    hostname: str
    state_dir: str
    data_root: str
    free_bytes: int
    deployed_at: float | None  # a stack deployed here: when; None: none


@dataclass(frozen=True)
class Received(FieldsJson):
    """`migrator agent receive`: one pre-copy stream extracted into its volume's staging dir."""
    volume: str
    sha256: str
    size: int
    files: int


@dataclass(frozen=True)
class Committed(FieldsJson):
    """Staging swapped in: the volumes, and the data that was live before, set aside (volume -> path)."""
    committed: list[str]
    kept_aside: list[str]
    aside: dict[str, str]


@dataclass(frozen=True)
class CutoverResult:
    """`migrator agent cutover`'s final reply: the deploy's result plus the move's own fields, or (aborted)
    only that nothing was committed."""
    committed: list[str]
    steps: dict[str, float]  # seconds per step from `ready` on
    aborted: bool = False
    deployed: dict = field(default_factory=dict)  # DeployResult.to_json() of the deploy here
    kept_aside: list[str] = field(default_factory=list)
    old_data: dict | None = None  # drop_old(): {"paths", "kept"[, "error"]}; None: no data held before
    secrets: dict | None = None  # {"path", "copy"}: the secrets file remembered here; None: none was sent

    def to_json(self) -> dict:
        if self.aborted:
            return {"committed": self.committed, "aborted": True, "steps": self.steps}
        return {**self.deployed, "committed": self.committed, "kept_aside": self.kept_aside,
                "old_data": self.old_data, "steps": self.steps, "secrets": self.secrets}


def staging_dir(data_root: str, volume: str) -> Path:
    return Path(data_root) / f".{volume}{STAGING_SUFFIX}"


def _safe_volume(name: str) -> str:
    """A volume name from the wire, held to the plan schema's name rule: one safe path component."""
    if not plan_pattern("name").search(name):
        raise UsageError(f"not a volume name: {name!r}")
    return name


def info(data_root: str) -> AgentInfo:
    root = Path(data_root)
    free = shutil.disk_usage(existing_ancestor(root)).free
    here = deployed.current() or {}
    return AgentInfo(version=__version__, euid=os.geteuid(), hostname=socket.gethostname(),
                     state_dir=str(state_dir()), data_root=str(root), free_bytes=free,
                     deployed_at=here.get("deployed_at"))


def receive(data_root: str, volume: str, fresh: bool) -> Received:
    """Extract the archive stream on stdin into the volume's staging dir; report its sha256 for the sender
    to compare (the sender only knows it when the stream ends)."""
    staging = staging_dir(data_root, _safe_volume(volume))
    if fresh and staging.exists():
        shutil.rmtree(staging)
    Path(data_root).mkdir(parents=True, exist_ok=True)
    stats = extract_archive(sys.stdin.buffer, staging, expected_sha256=None)
    sync_filesystem(staging)  # the bulk flushed now, while services run, so commit's flush has little left
    return Received(volume, stats.sha256, stats.size, stats.files)


def commit(data_root: str, volumes: list[str]) -> Committed:
    """Staging -> live by rename; a live dir already there is kept aside as <dir>.pre-move-<ts> until the
    cut-over is decided (`uncommit` puts it back, `drop_old` removes it). The staged data is flushed to
    disk first: the pre-copy's receive flushed its bulk already, the cut-over's delta (applied by
    `cutover`) is what is left."""
    try:
        sync_filesystem(data_root)
    except OSError as exc:
        raise MigratorError(f"cannot make the moved data under {data_root} durable: {exc.strerror}",
                            hint="check the target's disk (dmesg); nothing was committed") from None
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    kept = {}
    for volume in volumes:
        staging = staging_dir(data_root, _safe_volume(volume))
        live = Path(data_root) / volume
        if not staging.is_dir():
            raise UsageError(f"nothing staged for volume {volume} under {data_root}")
        if live.exists() or live.is_symlink():
            aside = Path(data_root) / f"{volume}.pre-move-{stamp}"
            os.rename(live, aside)
            kept[volume] = str(aside)
        os.rename(staging, live)
    fsync_dir(data_root)
    return Committed(volumes, list(kept.values()), kept)


def uncommit(data_root: str, volumes: list[str], aside: dict[str, str]) -> None:
    """Undo `commit`: the moved data goes back to staging (a retry pre-copies afresh), the data that was
    live before comes back from aside."""
    for volume in volumes:
        live, staging = Path(data_root) / volume, staging_dir(data_root, volume)
        if live.exists() or live.is_symlink():
            if staging.exists():
                shutil.rmtree(staging)
            os.rename(live, staging)
        if volume in aside:
            os.rename(aside[volume], live)
    fsync_dir(data_root)


def drop_old(aside: dict[str, str], keep: bool) -> dict | None:
    """Once the stack runs here, the data set aside at the commit is no rollback's any more: removed, or
    kept for the operator (--keep-old). None when there was none."""
    if not aside:
        return None
    if not keep:
        try:
            for path in aside.values():
                shutil.rmtree(path)
        except OSError as exc:  # the stack runs here now: a leftover is reported, never a failed move
            return {"paths": sorted(p for p in aside.values() if Path(p).exists()), "kept": True,
                    "error": f"could not remove it: {exc}"}
    return {"paths": sorted(aside.values()), "kept": keep}


def mark_moved(source: str) -> dict:
    record = {"from": source, "at": time.time()}
    write_json(registry.MOVED_IN.path, record)
    return record


Emit = Callable[[dict], None]


def plan_images(plan) -> list[str]:
    """Every image a deploy of `plan` needs on this VSN's engine (REST images are copied from there into a
    Host container's engine at deploy)."""
    refs = [plan.host.image] if plan.host else []
    refs += [v.image for v in plan.volumes] + [s.image for s in plan.enabled_services]
    return sorted(set(refs))


def load_image(stack, ref: str, stream) -> None:
    """An image archive from the source (a stream) -> a private temp file -> this VSN's engine."""
    with tempfile.TemporaryDirectory(dir=state_dir(), prefix="image-") as tmp:
        path = Path(tmp) / "image.tar"
        with open(path, "wb") as fh:
            while chunk := stream.read(1024 * 1024):
                fh.write(chunk)
        stack.outer.load_image(path)
    if not stack.outer.image_exists(ref):
        raise IntegrityError(f"the image the source sent did not provide {ref}")


def emit_strict(event: dict) -> None:
    """One event as one JSON line on stdout, flushed: the source reads them as they come."""
    sys.stdout.write(json.dumps(event, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def emit_line(event: dict) -> None:
    """emit_strict, but a source that went away (broken pipe) does not stop the cut-over here: whether
    the stack ends up running here is decided when `healthy` is (or cannot be) told."""
    try:
        emit_strict(event)
    except OSError:
        pass


def cutover(plan_path: str, secrets_path: str | None, source: str, heartbeat: bool = False,
            emit: Emit = emit_line, confirm: Emit = emit_strict, stdin=None,
            keep_old: bool = False) -> CutoverResult:
    """The target's half of the cut-over, driven by frames on stdin (migrator.remote.frames):
    `{"cmd": "receive", "volume": V}` + a data stream -> extract into V's staging dir, answer
    `{"event": "received", sha256, size, files, fingerprint}`; `{"cmd": "commit"}` -> swap staging in,
    deploy, probe health, install the heartbeat, mark moved-in; `{"cmd": "abort"}` or the end of input
    before a commit -> nothing committed (staged data stays for a retry). Deploy failures roll back to
    containerless (deploy's own rollback) and raise DeployFailed."""
    # Heavy imports (engine SDKs, jsonschema) here, before `ready`: `agent info|receive` stay light.
    from migrator.ops import check
    from migrator.ops.deploy import deploy
    from migrator.ops.teardown import teardown
    from migrator.plan import validate_files
    from migrator.remote.frames import FrameReader

    # Seconds per step, reported back so the source can show what its downtime consisted of.
    timer = StepTimer()
    remembered = operators_secrets(secrets_path)
    try:
        plan, secrets = validate_files(plan_path, remembered or secrets_path)
    except MigratorError:
        if not remembered:
            raise
        remembered = None  # the operator's file changed mode or owner since: the copy will do
        plan, secrets = validate_files(plan_path, secrets_path)
    data_root = plan.vsn.data_root
    volumes = [v.name for v in plan.volumes]
    # Everything that costs time but changes nothing happens before `ready`, while the source still runs.
    check.require(plan)
    stack = Stack.for_plan(plan)
    missing = [ref for ref in plan_images(plan) if not stack.outer.image_exists(ref)]
    timer.lap("prepare")
    emit({"event": "ready", "pid": os.getpid(), "steps": dict(timer.durations), "missing_images": missing})
    frames = FrameReader(stdin if stdin is not None else sys.stdin.buffer)
    timer = StepTimer()  # the steps from `ready` on, in the final reply
    while True:
        msg = frames.message()
        timer.lap("waiting")  # for the source: its image uploads, its services' stop, its next command
        if msg is None:
            raise MigratorError("the source went away before the commit; nothing was committed here",
                                hint="run `migrator move` again on the source (or `migrator recover` there)")
        cmd = msg.get("cmd")
        if cmd == "image":  # before the source stops: an image this VSN lacks, as `podman save` wrote it
            ref = str(msg.get("ref"))
            if ref not in missing:
                raise UsageError(f"image {ref[:80]!r} was not asked for")
            load_image(stack, ref, frames.data())
            timer.lap("load-images")
            emit({"event": "image-loaded", "ref": ref})
        elif cmd == "receive":
            volume = _safe_volume(str(msg.get("volume")))
            if volume not in volumes:
                raise UsageError(f"volume {volume} is not in the plan")
            stream = frames.data()
            staging = staging_dir(data_root, volume)
            stats = extract_archive(stream, staging, expected_sha256=None)
            if not stream.done:
                stream.drain()
                raise IntegrityError(f"{volume}: the stream went on after the archive's end")
            timer.lap(f"receive.{volume}")
            there = fingerprint(staging, content=False)
            timer.lap(f"fingerprint.{volume}")
            emit({"event": "received", "volume": volume, "sha256": stats.sha256, "size": stats.size,
                  "files": stats.files, "fingerprint": there})
        elif cmd == "abort":
            return CutoverResult(committed=[], steps=timer.durations, aborted=True)
        elif cmd == "commit":
            break
        else:
            raise UsageError(f"unknown cut-over command {cmd!r}")
    committed = commit(data_root, volumes)
    timer.lap("commit")
    emit({"event": "committed", **committed.to_json()})

    def roll_back_data() -> None:
        try:
            uncommit(data_root, volumes, committed.aside)
        except OSError as exc:  # the cause of the failure stays the error; this one is reported beside it
            emit({"event": "progress", "message": f"could not put the data held here before back: {exc}"})

    # check.require ran before `ready`; the moved data's sizes were checked on the source (move.preflight).
    try:
        result = deploy(plan, secrets, report=lambda m: emit({"event": "progress", "message": m}),
                        checked=True).to_json()
    except MigratorError:
        roll_back_data()
        raise
    timer.lap("deploy")
    try:
        confirm({"event": "healthy", "health": result.get("health", {})})
    except OSError as exc:
        # The source is gone (its pipe closed) before it could learn the stack runs here: it restarts its
        # own services (or its `recover` asks us and must find none). Never both: back to containerless.
        teardown(plan, verb="teardown")
        roll_back_data()
        raise MigratorError("the source went away before it learned that the stack is healthy here; "
                            "rolled back to containerless (the data held here before is back)") from exc
    if heartbeat:  # the stack's backup heartbeat moves with it (health judges the last backup)
        os.replace(registry.INCOMING.path / registry.LAST_BACKUP.name, registry.LAST_BACKUP.path)
    mark_moved(source)
    timer.lap("finish")
    old_data = drop_old(committed.aside, keep_old)
    if old_data:
        timer.lap("old-data")
    return CutoverResult(committed=committed.committed, steps=timer.durations, deployed=result,
                         kept_aside=committed.kept_aside, old_data=old_data,
                         secrets={"path": str(secrets.path), "copy": not remembered} if secrets_path else None)


def operators_secrets(incoming: str | None) -> str | None:
    """On a move back: the secrets file this VSN remembered from before the stack left, when it holds
    the values the source sent. Remembering it instead of the copy under <state dir>/incoming/ keeps
    the operator's later edits of their file in effect. None when there is no such file."""
    before = (deployed.current() or {}).get("secrets")
    if not incoming or not before or Path(before).resolve() == Path(incoming).resolve():
        return None
    try:
        same = json.loads(Path(before).read_bytes()) == json.loads(Path(incoming).read_bytes())
    except (OSError, ValueError):
        return None
    return before if same else None

"""`migrator move`: the whole stack and its data to another VSN over SSH, with a short downtime.

Pre-copy while services run, then one cut-over agent started before the stop, so the downtime is the
delta and the deploy. A failure before the target is healthy restarts the source; a killed move is
finished or undone from the journal. Steps: docs/move.md#move-to-another-vsn."""

from __future__ import annotations

import copy
import json
import shlex
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from migrator import __version__
from migrator.archive import capture_phase2, phase1_hooks, scan, write_archive
from migrator.archive.fingerprint import compare, fingerprint
from migrator.errors import IntegrityError, LockHeld, MigratorError, PreflightFailed, UsageError
from migrator.faults import checkpoint
from migrator.ops import check
from migrator.plan.model import Plan, Secrets, canonical_json
from migrator.remote.install import InstallOptions
from migrator.remote.install import install as install_migrator
from migrator.remote.session import MigratorMissing, RemoteVSN
from migrator.stack.datadirs import tree_size
from migrator.stack.quiesce import Quiesce, restart_stopped
from migrator.stack.timing import StepTimer
from migrator.stack.topology import Report, Stack, quiet
from migrator.state import deployed, registry, stackstate
from migrator.state.files import write_json
from migrator.state.journal import open_journal, undo
from migrator.state.paths import state_dir

JOURNAL_KEY = "move"
# Room the target must have beyond the data itself: 10% plus 1 GiB for logs, images and databases' growth.
SPACE_MARGIN_RATIO = 0.10
SPACE_MARGIN_BYTES = 1024**3
# How long `recover` waits for the target's cut-over agent to decide (its deploy waits for health probes,
# a rollback for the teardown) before it acts on the source; past it the source stays stopped.
TARGET_DECISION_WAIT_S = 600


@dataclass
class MoveResult:
    target: str
    volumes: list[str]
    bytes_precopy: int = 0
    bytes_delta: int = 0
    precopy_s: float = 0.0
    downtime_s: float = 0.0
    duration_s: float = 0.0
    health: dict = field(default_factory=dict)
    source: str = "containerless"
    # Seconds per step of the downtime window (stop, delta per volume, verify, commit, deploy, ...): what
    # the downtime consists of, for the bench and for operators tuning hooks and probes; before it (agent
    # start-up, images sent, pre_backup hooks) and the target agent's own account (receive, fingerprint,
    # deploy phases, ...).
    downtime_steps: dict = field(default_factory=dict)
    before_downtime_steps: dict = field(default_factory=dict)
    target_steps: dict = field(default_factory=dict)
    installed: dict | None = None  # what --install put on the target (None: migrator was there)
    images_sent: list = field(default_factory=list)  # images the target lacked, sent before the stop
    # The secrets file the target remembers: {"path", "copy"}; copy = the one this move sent, under the
    # target's <state dir>/incoming/ (a move back keeps the operator's file when it holds the same values).
    target_secrets: dict | None = None
    # The data the target held before (set aside as <volume>.pre-move-<ts> for the rollback): {"paths",
    # "kept"}; removed once the stack runs there unless --keep-old (kept = true). None: it held none.
    target_old_data: dict | None = None

    def to_json(self) -> dict:
        return dict(self.__dict__)


def compatible(local: str, remote: str) -> bool:
    """Same major.minor: the agent protocol and the plan schema only change with the minor version."""
    try:
        return local.split(".")[:2] == remote.split(".")[:2] and all(x.isdigit() for x in remote.split(".")[:2])
    except AttributeError:
        return False


def target_info(remote: RemoteVSN, plan: Plan, install: InstallOptions | None, report: Report) -> dict:
    """`agent info` of the target, after putting this migrator there first if it is missing or of an
    incompatible version and `install` says where (--install)."""
    hint = f"pass --install to put this migrator ({__version__}) on the target, or install that version there"
    args = ("agent", "info", "--data-root", plan.vsn.data_root)
    try:
        info = remote.migrator(*args)
        problem = None if compatible(__version__, str(info.get("version", "?"))) else \
            f"{remote.what} runs migrator {str(info.get('version', '?'))[:40]!r}; this one is {__version__}"
    except (MigratorMissing, UsageError) as exc:  # none there, or one too old to know `agent info`
        problem = exc.message
    if problem is None:
        return info
    if install is None:
        raise PreflightFailed(problem, hint=hint)
    report(f"{problem}: installing this migrator there (--install)")
    installed = install_migrator(remote, install, report)
    info = {**remote.migrator(*args), "installed": installed}
    if not compatible(__version__, str(info.get("version", "?"))):
        raise PreflightFailed(f"{remote.what} still runs migrator {str(info.get('version', '?'))[:40]!r} after "
                              f"--install put {__version__} into {install.directory}",
                              hint=f"the remote command ({shlex.join(remote.command)[:80]}) runs another migrator: "
                                   f"point --remote-migrator at {install.link or install.directory + '/venv/bin/migrator'}")
    return info


def retarget(raw: dict, engine: str | None = None, socket_url: str | None = None) -> dict:
    """The plan as the target runs it: the same stack and data, another engine (podman <-> docker) or engine
    socket there. A new engine without a socket gets that engine's default one; TLS stays only for tcp://."""
    if not engine and not socket_url:
        return raw
    out = copy.deepcopy(raw)
    vsn = out["vsn"]
    if engine and engine != vsn["engine"]:
        vsn["engine"] = engine
        if not socket_url:
            vsn.pop("socket", None)
    if socket_url:
        vsn["socket"] = socket_url
    if not str(vsn.get("socket", "")).startswith("tcp://"):
        vsn.pop("tls", None)
    return out


def preflight(remote: RemoteVSN, plan: Plan, secrets: Secrets, report: Report,
              install: InstallOptions | None = None, target_raw: dict | None = None) -> dict:
    info = target_info(remote, plan, install, report)
    if info.get("deployed_at"):
        raise PreflightFailed(f"{remote.what} already runs a deployed stack; a move would replace its deployment",
                              hint="move to a VSN without a stack, or tear that stack down there first")
    if info.get("euid") != 0:
        raise PreflightFailed(f"{remote.what}: migrator does not run as root there (uid {info.get('euid')})")
    # The data moves as it is: too big for its volume's max_size would fail the target's deploy (its
    # agent skips the size part of the check) after the services stopped; refuse now instead.
    too_big = [f"{r.name}: {r.detail}" for r in check.size_results(plan) if not r.ok]
    if too_big:
        raise PreflightFailed(f"a data dir exceeds its volume's max_size: {too_big[0]}", details=too_big,
                              hint="raise max_size in the plan (or clean up the data), then move")
    needed = sum(tree_size(Path(v.root_dir(plan.vsn.data_root))) for v in plan.volumes
                 if Path(v.root_dir(plan.vsn.data_root)).exists())
    margin = int(needed * SPACE_MARGIN_RATIO) + SPACE_MARGIN_BYTES
    free = int(info.get("free_bytes", 0))
    if free < needed + margin:
        raise PreflightFailed(f"{remote.what} has {free} bytes free under {plan.vsn.data_root}; "
                              f"the data needs {needed} + {margin} margin")
    incoming = f"{info['state_dir']}/{registry.INCOMING.name}"
    remote.makedirs(incoming)
    remote.put_file(f"{incoming}/{registry.PLAN.name}", canonical_json(target_raw or plan.raw), 0o600)
    secrets_path = None
    if secrets.path:
        secrets_path = f"{incoming}/secrets.json"
        remote.put_file(secrets_path, json.dumps(secrets.values).encode(), 0o600)
    report(f"checking {remote.what}")
    args = ["check", f"{incoming}/{registry.PLAN.name}"] + (["--secrets", secrets_path] if secrets_path else [])
    remote.migrator(*args)
    return {"plan": f"{incoming}/{registry.PLAN.name}", "secrets": secrets_path, "needed": needed, "free": free,
            "state_dir": info["state_dir"], "incoming": incoming, "installed": info.get("installed")}


def send_volume(remote: RemoteVSN, plan: Plan, volume: str, capture, fresh: bool) -> tuple[int, str]:
    """Stream one archive (built by `capture(sinks)`) into the target's staging dir; check its sha256."""
    args = ["agent", "receive", "--volume", volume, "--data-root", plan.vsn.data_root] + (["--fresh"] if fresh else [])
    stream = remote.stream(*args)
    try:
        stats = capture([stream])
    except BaseException:
        stream.abort()
        raise
    code, out, err = stream.finish()
    reply = remote.reply(code, out, err, "agent receive")
    if reply.get("sha256") != stats.sha256 or reply.get("size") != stats.size:
        raise IntegrityError(f"{volume}: the target received {reply.get('size')} bytes with sha256 "
                             f"{reply.get('sha256')}, we sent {stats.size} with {stats.sha256}")
    return stats.size, stats.sha256


def move(plan: Plan, secrets: Secrets, target: str, *, keep_source: bool = False, keep_old: bool = False,
         remote_command: list[str] | None = None, ssh_options: dict | None = None,
         install: InstallOptions | None = None, target_engine: str | None = None, target_socket: str | None = None,
         report: Report = quiet) -> dict:
    started = time.monotonic()
    remote = RemoteVSN.open(target, ssh_options, remote_command)
    result = MoveResult(target=target, volumes=[v.name for v in plan.volumes])
    stack = Stack.for_plan(plan, report)
    try:
        report(f"preflight of {remote.what}")
        files = preflight(remote, plan, secrets, report, install, retarget(plan.raw, target_engine, target_socket))
        files["keep_old"] = keep_old
        result.installed = files["installed"]
        with open_journal("move") as journal:
            journal.note(JOURNAL_KEY, {"plan": plan.raw, "target": target, "stage": "precopy",
                                       "ssh_options": ssh_options or {}, "remote_command": remote.command,
                                       "keep_source": keep_source})
            states = {}
            for vol in plan.volumes:
                root = Path(vol.root_dir(plan.vsn.data_root))
                root.mkdir(parents=True, exist_ok=True)
                report(f"pre-copy of {vol.name} while services run")
                states[vol.name] = scan(root)
                size, _sha = send_volume(remote, plan, vol.name, lambda sinks, r=root, s=states[vol.name]: write_archive(
                    r, sinks, **phase1_hooks(s)), fresh=True)
                result.bytes_precopy += size
            result.precopy_s = round(time.monotonic() - started, 3)
            checkpoint("move.precopied")
            quiesce = Quiesce(stack, journal, report)
            try:
                with quiesce:
                    cut_over(remote, plan, stack, quiesce, journal, states, files, result)
            except MigratorError:
                journal.forget(JOURNAL_KEY)  # handled: the source services were restarted on the way out
                raise
            result.source = finish_source(stack, keep_source, target, report)
            journal.forget(JOURNAL_KEY)
    finally:
        remote.close()
    result.duration_s = round(time.monotonic() - started, 3)
    return result.to_json()


def send_images(agent, stack: Stack, missing: list[str]) -> list[str]:
    """Images the target lacks and this VSN has go to the agent before the services stop, so the target's
    deploy finds them (no registry needed, and no image copy inside the downtime). Ones we lack too are
    left to the target's deploy (pull)."""
    sent = []
    for ref in missing:
        if not stack.outer.image_exists(str(ref)):
            continue
        stack.report(f"sending image {ref} to the target")
        with tempfile.TemporaryDirectory(dir=state_dir(), prefix="image-") as tmp:
            path = Path(tmp) / "image.tar"
            stack.outer.save_image(str(ref), path)
            agent.send({"cmd": "image", "ref": str(ref)})
            sink = agent.data()
            with open(path, "rb") as fh:
                while chunk := fh.read(1024 * 1024):
                    sink.write(chunk)
            sink.close()
        agent.event("image-loaded")
        sent.append(str(ref))
    return sent


def cut_over(remote: RemoteVSN, plan: Plan, stack: Stack, quiesce: Quiesce, journal, states: dict, files: dict,
             result: MoveResult) -> None:
    """Source services down -> delta sent and checked -> target deployed and healthy, through ONE remote
    agent process (`migrator agent cutover`) started while the services still run, so its start-up
    (Python, imports, plan validation, engine check) is not downtime, and no step of the window pays for
    another SSH exec. Raises on failure; the caller's Quiesce then restarts the source services, and the
    agent, seeing no commit, commits nothing (or its deploy rolls itself back to containerless)."""
    report = stack.report
    # The stack's backup heartbeat moves with it (health on the target judges the last backup taken); no
    # backup can run meanwhile (we hold the lock), so it goes now, and the agent installs it once healthy.
    args = ["agent", "cutover", "--plan", files["plan"], "--from", socket.gethostname()]
    last_backup = registry.LAST_BACKUP.path
    if last_backup.exists():
        remote.put_file(f"{files['incoming']}/{registry.LAST_BACKUP.name}", last_backup.read_bytes(), 0o600)
        args.append("--heartbeat")
    if files.get("keep_old"):
        args.append("--keep-old")
    report(f"starting the cut-over agent on {remote.what}")
    before_downtime_steps = StepTimer(result.before_downtime_steps)
    agent = remote.agent(*(args + (["--secrets", files["secrets"]] if files["secrets"] else [])))
    try:
        ready = agent.event("ready")
        result.target_steps = {f"before-downtime.{k}": v for k, v in (ready.get("steps") or {}).items()}
        before_downtime_steps.lap("agent-ready")
        result.images_sent = send_images(agent, stack, ready.get("missing_images") or [])
        before_downtime_steps.lap("images")
        services = quiesce.running(list(plan.enabled_services))
        with before_downtime_steps.step("hooks"):
            quiesce.run_hooks(services, "pre_backup")  # services still up: not downtime
        quiesce.stop(services)
        down_since = min(quiesce.stopped_at.values(), default=time.monotonic())
        result.downtime_steps["stop"] = round(time.monotonic() - down_since, 3)  # from the first stop
        downtime_steps = StepTimer(result.downtime_steps)
        checkpoint("move.source-stopped")
        sent = {}
        for vol in plan.volumes:
            root = Path(vol.root_dir(plan.vsn.data_root))
            report(f"sending what changed in {vol.name}")
            with downtime_steps.step(f"delta.{vol.name}"):
                agent.send({"cmd": "receive", "volume": vol.name})
                sink = agent.data()
                sent[vol.name] = capture_phase2(root, [sink], states[vol.name])[0]
                sink.close()
            result.bytes_delta += sent[vol.name].size
        for vol in plan.volumes:  # the agent extracts and fingerprints while we fingerprint our side
            with downtime_steps.step(f"verify.{vol.name}"):
                ours = fingerprint(Path(vol.root_dir(plan.vsn.data_root)), content=False)
                got = agent.event("received")
                stats = sent[vol.name]
                if got.get("volume") != vol.name or got.get("sha256") != stats.sha256 or got.get("size") != stats.size:
                    raise IntegrityError(f"{vol.name}: the target received {got.get('size')} bytes with sha256 "
                                         f"{got.get('sha256')}, we sent {stats.size} with {stats.sha256}")
                differences = compare(ours, got.get("fingerprint") or {})
            if differences:
                agent.send({"cmd": "abort"})
                raise IntegrityError(f"{vol.name} differs on the target after the transfer", details=differences)
        journal.note(JOURNAL_KEY, {**journal.entry["undo"][JOURNAL_KEY], "stage": "deploying"})
        with downtime_steps.step("commit"):
            agent.send({"cmd": "commit"})
            agent.event("committed")
        checkpoint("move.committed")  # the target deploys and decides now (tests kill here)
        report(f"deploying on {remote.what}")
        with downtime_steps.step("deploy"):
            agent.event("healthy", on_progress=report)  # told = the target keeps the stack (see move_target)
            deployed_there = agent.finish(on_progress=report)
    except BaseException:
        agent.abort()
        raise
    result.health = deployed_there.get("health", {})
    result.target_secrets = deployed_there.get("secrets")
    result.target_old_data = deployed_there.get("old_data")
    result.target_steps.update(deployed_there.get("steps") or {})
    result.target_steps.update({f"deploy.{k}": v for k, v in (deployed_there.get("timings") or {}).items()})
    result.downtime_s = round(time.monotonic() - down_since, 3)
    checkpoint("move.target-healthy")
    journal.note(JOURNAL_KEY, {**journal.entry["undo"][JOURNAL_KEY], "stage": "target-healthy"})
    quiesce.keep_stopped()  # success: the source stays down


def finish_source(stack: Stack, keep_source: bool, target: str, report: Report) -> str:
    """The stack runs on the target (which remembered where it came from): leave this VSN containerless,
    or its containers stopped with --keep-source, and remember where the stack went."""
    with stackstate.pending("move"):
        if keep_source:
            stack.stop_holders()  # the services' published ports go with them
            state = "stopped (kept)"
        else:
            report("leaving the source containerless (data kept)")
            stack.drop_all()
            state = "containerless"
        deployed.forget()
    write_json(registry.MOVED_OUT.path, {"to": target, "at": time.time(), "source": state})
    return state


def target_decision(remote: RemoteVSN, report: Report) -> bool:
    """Whether the stack runs on the target once the target has decided. Its cut-over agent holds the
    target's operation lock until it has kept the stack (healthy, told) or rolled back, so a `migrator
    recover --wait` there returns only then (LockHeld past the bound), having undone the half-done deploy
    of an agent that died; only then is the target's status final."""
    report(f"waiting for {remote.what} to finish its side of the move (at most {TARGET_DECISION_WAIT_S}s)")
    remote.migrator("recover", "--wait", str(TARGET_DECISION_WAIT_S))
    return remote.migrator("status").get("state") == "running"


@undo(JOURNAL_KEY)
def _finish_or_undo_move(fact: dict, report: Report) -> str:
    """Ask the target, once it has decided (target_decision), whether the stack runs there: then finish
    (source down), else restart the source. An unreachable target counts as 'not there'; one still
    deciding after TARGET_DECISION_WAIT_S leaves the journal (and the source stopped) for the next run."""
    plan = Plan.from_json(fact["plan"])
    stack = Stack.for_plan(plan, report)
    running_there = False
    if fact.get("stage") in ("deploying", "target-healthy"):
        try:
            remote = RemoteVSN.open(fact["target"], fact.get("ssh_options"), fact.get("remote_command"))
            try:
                running_there = target_decision(remote, report)
            finally:
                remote.close()
        except LockHeld as exc:  # still deciding: restarting here now could leave both sides serving
            raise MigratorError(f"{fact['target']} has not decided within {TARGET_DECISION_WAIT_S}s whether it "
                                f"keeps the stack ({exc.message}); the services here stay stopped",
                                hint="run `migrator recover` again; it finishes or undoes the move once the "
                                     "target has decided") from exc
        except MigratorError as exc:
            report(f"cannot ask the target ({exc.message}); keeping the stack on this VSN")
    if running_there:
        finish_source(stack, fact.get("keep_source", False), fact["target"], report)
        return f"finished an interrupted move: the stack runs on {fact['target']}"
    restart_stopped({"plan": fact["plan"], "services": [s.name for s in plan.enabled_services]}, report)
    return f"undid an interrupted move to {fact['target']}: the stack runs here again"

"""`migrator cron install|show|remove`: the plan's schedules (and serve at boot) as a cron file or systemd units.

Installing is idempotent and atomic, as cron reads /etc/cron.d at any moment. What was written (and the
serve options) is remembered in the state dir, for show, remove and `cleanup`.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from migrator.errors import PlanInvalid, UsageError
from migrator.plan.checks import valid_cron_expression
from migrator.plan.model import Plan
from migrator.results import FieldsJson
from migrator.state import registry
from migrator.state.files import atomic_write, read_json, write_json
from migrator.state.paths import DEFAULT_STATE_DIR

DEFAULT_CRON_FILE = "/etc/cron.d/migrator"
SERVE_UNIT = "migrator-serve.service"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Lock waits: a scheduled job that finds another operation running (a backup meeting a long drill)
# waits for it rather than skipping the day. Health never waits: it skips the container checks instead.
BACKUP_WAIT = 3 * 3600
DRILL_WAIT = 6 * 3600
PRUNE_WAIT = 6 * 3600
# Environment a scheduled run needs to find the same state as the installing one.
CARRIED_ENV = ("MIGRATOR_STATE_DIR", "MIGRATOR_RUNTIME_DIR", "MIGRATOR_METRICS_FILE", "MIGRATOR_MAILER")


@dataclass(frozen=True)
class Job:
    verb: str
    schedule: str
    args: tuple[str, ...]
    path: str  # JSON path of the schedule in the plan

    def to_json(self) -> dict:
        return {"verb": self.verb, "schedule": self.schedule, "args": list(self.args), "path": self.path}


@dataclass(frozen=True)
class CronInstalled(FieldsJson):
    file: str
    changed: bool  # False: the file already had this content and was not rewritten
    jobs: tuple[Job, ...]
    content: str
    serve: list[str] | None  # the words after `migrator serve` on the @reboot line; None: no such line

    def to_json(self) -> dict:
        return {**super().to_json(), "jobs": [j.to_json() for j in self.jobs]}


@dataclass(frozen=True)
class CronShown(FieldsJson):
    file: str
    installed: str | None  # the file's content; None: not there
    expected: str | None  # what `install` would write; None: no plan to compare with
    in_sync: bool
    other_files: list[str]  # other cron files `install` wrote
    systemd_dirs: list[str]  # unit dirs `install --systemd` wrote
    serve: list[str] | None
    serve_units: list[str]  # migrator-serve.service files in those dirs


@dataclass(frozen=True)
class CronRemoved(FieldsJson):
    file: str
    removed: bool  # False: there was nothing to remove


@dataclass(frozen=True)
class SystemdInstalled(FieldsJson):
    directory: str
    units: list[str]
    changed: list[str]
    removed: list[str]  # stale migrator units no longer wanted
    next_step: str  # the systemctl command line to run
    serve: list[str] | None


@dataclass(frozen=True)
class SystemdRemoved(FieldsJson):
    directory: str
    removed: list[str]


def cron_file(path: str | os.PathLike | None = None) -> Path:
    return Path(path or os.environ.get("MIGRATOR_CRON_FILE") or DEFAULT_CRON_FILE)


def _remembered(kind: str) -> list[str]:
    """Schedule files (`cron`) or unit dirs (`systemd`) that `install` wrote, from the state dir."""
    return list((read_json(registry.CRON.path, {}) or {}).get(kind, []))


def remembered_serve(path: str | os.PathLike) -> list[str] | None:
    """The `serve` arguments installed into this cron file or unit dir; None: no serve line there."""
    args = ((read_json(registry.CRON.path, {}) or {}).get("serve") or {}).get(str(path))
    return None if args is None else list(args)


def serve_args(text: str) -> list[str]:
    """`--serve-args "..."` as argv words (shell quoting rules); refused (exit 2) when it cannot go into a
    cron line or a unit: a newline, or quoting shlex cannot parse."""
    if "\n" in text or "\r" in text:
        raise UsageError("--serve-args contains a newline; it cannot go into a cron line or a unit",
                         hint='give the serve options on one line, e.g. --serve-args "--listen 127.0.0.1:8765"')
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise UsageError(f"--serve-args is not parseable: {exc}: {text!r}",
                         hint="quote it as a shell would, e.g. --serve-args \"--listen 0.0.0.0:8765 "
                              "--tls-cert /etc/migrator/cert.pem --tls-key /etc/migrator/key.pem\"") from None


def serve_choice(path: str | os.PathLike, serve: bool | None, args: list[str] | None) -> list[str] | None:
    """What `install` writes for serve into `path`: --no-serve (False) none; --serve-args those words;
    --serve alone or nothing said: what was installed there before (`--serve` alone: [] when nothing was),
    so installing again after a plan change keeps the serve line."""
    if serve is False:
        if args is not None:
            raise UsageError("--serve-args and --no-serve contradict each other")
        return None
    if args is not None:
        return list(args)
    before = remembered_serve(path)
    return before if before is not None or not serve else []


def installed_file(path: str | os.PathLike | None = None) -> tuple[Path, list[str]]:
    """The cron file `show` and `remove` act on, and the other installed ones: --file, else
    $MIGRATOR_CRON_FILE, else the file `install` wrote (the state dir remembers it), else the default."""
    if path or os.environ.get("MIGRATOR_CRON_FILE"):
        return cron_file(path), []
    files = _remembered("cron")
    if not files:
        return cron_file(), []
    chosen = DEFAULT_CRON_FILE if DEFAULT_CRON_FILE in files else files[0]
    return Path(chosen), [f for f in files if f != chosen]


def jobs(plan: Plan) -> list[Job]:
    """The plan's scheduled jobs; every problem at once as PlanInvalid (exit 3) with its JSON path."""
    backup, health = plan.backup, plan.health
    retention = backup.get("retention", {})
    wanted = [
        ("backup", backup.get("schedule"), ("--wait", str(BACKUP_WAIT)), "backup.schedule"),
        ("health", health.get("schedule"), ("--notify",), "health.schedule"),
        ("drill", backup.get("drill_schedule"), ("--wait", str(DRILL_WAIT)), "backup.drill_schedule"),
        ("prune", retention.get("schedule"), ("--wait", str(PRUNE_WAIT)), "backup.retention.schedule"),
    ]
    problems, out = [], []
    for verb, expr, args, path in wanted:
        if expr is None:
            continue
        if not valid_cron_expression(expr):
            problems.append(f"{path}: {expr!r} is not a valid five-field cron expression")
            continue
        if verb in ("backup", "drill", "prune") and not backup.get("targets"):
            problems.append(f"{path}: scheduled {verb} needs backup.targets")
            continue
        if verb == "prune" and not any(k.startswith("keep_") for k in retention):
            problems.append(f"{path}: scheduled prune needs backup.retention.keep_* values")
            continue
        if verb == "health" and "notify" not in health:
            args = ()  # no address to mail: the check still runs, logs and writes metrics
        out.append(Job(verb, expr, args, path))
    if problems:
        raise PlanInvalid(f"the plan's schedules are invalid ({len(problems)} problem(s))", details=problems)
    return out


def migrator_command() -> list[str]:
    """This migrator by absolute path: the venv's console script when present, else `python -m migrator`."""
    script = Path(sys.executable).parent / "migrator"
    if script.exists():
        return [str(script)]
    found = shutil.which("migrator")
    return [str(Path(found).resolve())] if found else [sys.executable, "-m", "migrator"]


def environment() -> dict[str, str]:
    env = {}
    for name in CARRIED_ENV:
        value = os.environ.get(name)
        if value and not (name == "MIGRATOR_STATE_DIR" and value == DEFAULT_STATE_DIR):
            if "\n" in value:
                raise UsageError(f"${name} contains a newline; it cannot go into a cron file")
            env[name] = value
    env["PATH"] = f"{Path(migrator_command()[0]).parent}:{SYSTEM_PATH}"
    return env


def _shell_line(verb: str, args: tuple[str, ...] | list[str]) -> str:
    log = registry.cron_log(verb)
    argv = [*migrator_command(), verb, *args]
    # cron turns an unescaped % into a newline.
    return f"{shlex.join(argv)} >> {shlex.quote(str(log))} 2>&1".replace("%", "\\%")


def command_line(job: Job) -> str:
    """The shell command of one job (cron runs it with /bin/sh; every word is quoted)."""
    return _shell_line(job.verb, job.args)


def render_cron(plan: Plan, serve: list[str] | None = None) -> str:
    """The cron file; `serve` (argv words after `migrator serve`) adds an @reboot line for it."""
    lines = [f"# migrator schedules for VSN {plan.vsn.name}. Written by `migrator cron install`; edit the plan",
             "# and install again instead of editing this file.",
             "SHELL=/bin/sh"]
    lines += [f"{k}={v}" for k, v in sorted(environment().items())]
    for job in jobs(plan):
        lines.append(f"{job.schedule} root {command_line(job)}")
    if serve is not None:
        lines.append(f"@reboot root {_shell_line('serve', serve)}")
    return "\n".join(lines) + "\n"


def _remember(kind: str, path: Path, present: bool, serve: list[str] | None = None) -> None:
    info = read_json(registry.CRON.path, {}) or {}
    files = set(info.get(kind, []))
    (files.add if present else files.discard)(str(path))
    info[kind] = sorted(files)
    served = dict(info.get("serve") or {})
    if present and serve is not None:
        served[str(path)] = list(serve)
    else:
        served.pop(str(path), None)
    info["serve"] = served
    write_json(registry.CRON.path, info)


def _write_if_changed(path: Path, text: str, mode: int) -> bool:
    try:
        if path.read_text() == text:
            return False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    # cron ignores files in /etc/cron.d that are group- or world-writable: 0644, written atomically.
    atomic_write(path, text.encode(), mode=mode)
    os.chmod(path, mode)
    return True


def install(plan: Plan, path: str | os.PathLike | None = None, serve: bool | None = None,
            serve_argv: list[str] | None = None) -> CronInstalled:
    """Write the cron file. serve True/False adds/drops the @reboot serve line; None keeps what is
    installed there (see serve_choice)."""
    target = cron_file(path)
    served = serve_choice(target, serve, serve_argv)
    text = render_cron(plan, served)
    changed = _write_if_changed(target, text, 0o644)
    _remember("cron", target, True, served)
    return CronInstalled(str(target), changed, tuple(jobs(plan)), text, served)


def _serve_units(dirs: list[str]) -> list[str]:
    return [str(Path(d) / SERVE_UNIT) for d in dirs if (Path(d) / SERVE_UNIT).exists()]


def show(plan: Plan | None, path: str | os.PathLike | None = None) -> CronShown:
    target, others = installed_file(path)
    try:
        installed = target.read_text()
    except FileNotFoundError:
        installed = None
    served = remembered_serve(target) if installed is not None else None
    expected = render_cron(plan, served) if plan else None
    systemd_dirs = _remembered("systemd")
    return CronShown(str(target), installed, expected, installed is not None and installed == expected,
                     others, systemd_dirs, served, _serve_units(systemd_dirs))


def remove(path: str | os.PathLike | None = None) -> CronRemoved:
    target, _others = installed_file(path)
    try:
        target.unlink()
        removed = True
    except FileNotFoundError:
        removed = False
    _remember("cron", target, False)
    return CronRemoved(str(target), removed)


# --- systemd timers --------------------------------------------------------------------------------
_DOW_NAMES = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
_CRON_NAMES = {name: i for i, name in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])}
_CRON_NAMES.update({m: i + 1 for i, m in enumerate(["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug",
                                                        "sep", "oct", "nov", "dec"])})
_RANGES = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]


def _num(token: str) -> int:
    return _CRON_NAMES[token.lower()] if token.lower() in _CRON_NAMES else int(token)


def _values(item: str, low: int, high: int) -> list[int]:
    base, _, step = item.partition("/")
    if base == "*":
        start, stop = low, high
    elif "-" in base:
        start, stop = (_num(x) for x in base.split("-", 1))
        if start > stop:
            raise ValueError(f"wrapping range {base!r} has no systemd equivalent")
    else:
        start = _num(base)
        stop = high if step else start
    return list(range(start, stop + 1, int(step) if step else 1))


def _field(token: str, index: int) -> str:
    """One cron field in systemd calendar syntax: `*`, plain ranges as a..b, everything else (steps,
    days of the week) as an explicit list, which both understand the same way."""
    if token == "*":
        return "*"
    low, high = _RANGES[index]
    if index == 4:  # days of the week: names, 0 and 7 are both Sunday
        days = sorted({v % 7 for item in token.split(",") for v in _values(item, 0, 6)})
        return ",".join(_DOW_NAMES[d] for d in days)
    parts = []
    for item in token.split(","):
        base, _, step = item.partition("/")
        if "-" in base and not step:
            a, b = (_num(x) for x in base.split("-", 1))
            if a > b:
                raise ValueError(f"wrapping range {base!r} has no systemd equivalent")
            parts.append(f"{a}..{b}")
        else:
            parts += [str(v) for v in _values(item, low, high)]
    return ",".join(parts)


def on_calendar(expr: str) -> str:
    """A five-field cron expression as a systemd OnCalendar= value. Raises ValueError where the two
    differ: cron ORs a restricted day-of-month with a restricted day-of-week, systemd ANDs them."""
    if not valid_cron_expression(expr):
        raise ValueError(f"{expr!r} is not a valid five-field cron expression")
    minute, hour, dom, month, dow = expr.split()
    if dom != "*" and dow != "*":
        raise ValueError(f"{expr!r} restricts both day of month and day of week (cron ORs them, systemd ANDs)")
    fields = [_field(f, i) for i, f in enumerate((minute, hour, dom, month, dow))]
    days = "" if fields[4] == "*" else f"{fields[4]} "
    return f"{days}*-{fields[3]}-{fields[2]} {fields[1]}:{fields[0]}:00"


def _environment_lines(env: dict[str, str]) -> str:
    # systemd expands %-specifiers in these lines: a literal % is written %%.
    return "".join(f"Environment={shlex.quote(f'{k}={v}')}\n".replace("%", "%%") for k, v in sorted(env.items()))


def render_systemd(plan: Plan, serve: list[str] | None = None) -> dict[str, str]:
    """{unit file name: content} for every job: a oneshot service and its timer; `serve` (argv words after
    `migrator serve`) adds migrator-serve.service, started at boot."""
    env = environment()
    units: dict[str, str] = {}
    problems = []
    for job in jobs(plan):
        try:
            calendar = on_calendar(job.schedule)
        except ValueError as exc:
            problems.append(f"{job.path}: {exc}")
            continue
        argv = [*migrator_command(), job.verb, *job.args]
        env_lines = _environment_lines(env)
        units[f"migrator-{job.verb}.service"] = (
            f"[Unit]\nDescription=migrator {job.verb} of VSN {plan.vsn.name}\n\n"
            f"[Service]\nType=oneshot\n{env_lines}ExecStart={shlex.join(argv).replace('%', '%%')}\n")
        # A missed backup/drill/prune (machine off at the time) runs at boot; a missed health check does not.
        persistent = "false" if job.verb == "health" else "true"
        units[f"migrator-{job.verb}.timer"] = (
            f"[Unit]\nDescription=migrator {job.verb} schedule ({job.schedule})\n\n"
            f"[Timer]\nOnCalendar={calendar}\nPersistent={persistent}\n\n[Install]\nWantedBy=timers.target\n")
    if problems:
        raise PlanInvalid("some schedules have no systemd equivalent; use the cron file instead",
                          details=problems)
    if serve is not None:
        argv = [*migrator_command(), "serve", *serve]
        # KillMode=process: stopping serve leaves an action it started (a child migrator) to finish.
        units[SERVE_UNIT] = (
            f"[Unit]\nDescription=migrator serve (dashboard and API) of VSN {plan.vsn.name}\n"
            "Wants=network-online.target\nAfter=network-online.target\n\n"
            f"[Service]\nType=simple\n{_environment_lines(env)}ExecStart={shlex.join(argv).replace('%', '%%')}\n"
            "Restart=on-failure\nKillMode=process\n\n[Install]\nWantedBy=multi-user.target\n")
    return units


def install_systemd(plan: Plan, directory: str | os.PathLike, serve: bool | None = None,
                    serve_argv: list[str] | None = None) -> SystemdInstalled:
    base = Path(directory)
    served = serve_choice(base, serve, serve_argv)
    units = render_systemd(plan, served)
    changed = [name for name, text in sorted(units.items()) if _write_if_changed(base / name, text, 0o644)]
    stale = [p.name for p in base.glob("migrator-*.*") if p.suffix in (".service", ".timer") and p.name not in units]
    for name in stale:
        (base / name).unlink()
    _remember("systemd", base, True, served)
    enable = sorted(n for n in units if n.endswith(".timer")) + ([SERVE_UNIT] if served is not None else [])
    return SystemdInstalled(str(base), sorted(units), changed, stale,
                            f"systemctl daemon-reload && systemctl enable --now {' '.join(enable)}", served)


def remove_systemd(directory: str | os.PathLike) -> SystemdRemoved:
    base = Path(directory)
    removed = []
    for p in sorted(base.glob("migrator-*.*")):
        if p.suffix in (".service", ".timer"):
            p.unlink()
            removed.append(p.name)
    _remember("systemd", base, False)
    return SystemdRemoved(str(base), removed)


def remove_all_installed() -> list[str]:
    """Remove every schedule file `install` wrote (for cleanup). Returns what was removed."""
    info = read_json(registry.CRON.path, {}) or {}
    removed = []
    for f in info.get("cron", []):
        if remove(f).removed:
            removed.append(f)
    for d in info.get("systemd", []):
        removed += [str(Path(d) / n) for n in remove_systemd(d).removed]
    return removed

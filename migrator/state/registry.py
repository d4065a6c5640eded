"""Every file and directory migrator keeps in its state dir, by name: what each holds and its one path.

Code outside state/ reaches a state file through an entry here, never by spelling its name, so the list
below is the whole of what the state dir can hold (and what `cleanup` removes with a stack)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from migrator.state.paths import state_dir


@dataclass(frozen=True)
class Entry:
    name: str
    what: str
    per_stack: bool = False  # belongs to the stack deployed here: `cleanup` removes it with the stack

    @property
    def path(self) -> Path:
        return state_dir() / self.name


ENTRIES: dict[str, Entry] = {}


def _entry(name: str, what: str, per_stack: bool = False) -> Entry:
    entry = Entry(name, what, per_stack)
    ENTRIES[name] = entry
    return entry


# files of the stack deployed here
PLAN = _entry("plan.json", "the deployed plan's copy", per_stack=True)
DEPLOYMENT = _entry("deployment.json", "where the plan copy and the secrets file are, when deployed",
                    per_stack=True)
LAST_BACKUP = _entry("last_backup.json", "the last successful backup: snapshot id, time, targets", per_stack=True)
LAST_DRILL = _entry("last_drill.json", "the last restore drill's result and time", per_stack=True)
NOTIFY_STATE = _entry("notify_state.json", "which health failures were mailed (one mail per episode)",
                      per_stack=True)
HEALTH_LAST = _entry("health_last.json", "the failing health checks last recorded in the history", per_stack=True)
CRON = _entry("cron.json", "the scheduled jobs `cron install` wrote", per_stack=True)
# markers
MOVED_OUT = _entry("moved-out.json", "the stack was moved away from this VSN: where to, when")
MOVED_IN = _entry("moved-in.json", "the stack was moved onto this VSN: from where, when")
OS_UPDATE = _entry("os-update.json", "an OS update in progress: its phase")
OS_UPDATE_FINGERPRINT = _entry("os-update-fingerprint.json", "the data fingerprints taken before an OS update")
# operations
JOURNAL = _entry("journal.json", "what a running operation must undo if it dies")
STACK_STATE = _entry("stack_state.json", "the stack's lifecycle state")
LOCK = _entry("lock", "the operation lock")
HISTORY = _entry("history.sqlite", "the operation history (`migrator log`)")
EVENTS = _entry("events.jsonl", "events waiting to go out")
# directories
SPOOL = _entry("spool", "a running backup's local phase-2 objects; restore --dry-run's preview")
DRILL = _entry("drill", "restore drills' scratch data")
INCOMING = _entry("incoming", "a move's data and state arriving on this VSN")
METRICS = _entry("metrics", "the Prometheus textfile and the values behind it")
CHAIN = _entry("chain", "per VSN, the tree state of the last snapshot (incremental backups start from it)")
SIGNING = _entry("signing", "this VSN's snapshot signing key")
SERVE = _entry("serve", "the web service's sessions")

PER_STACK: tuple[Entry, ...] = tuple(e for e in ENTRIES.values() if e.per_stack)


def cron_log(verb: str) -> Path:
    """The output of the scheduled runs of `verb`."""
    return state_dir() / f"cron-{verb}.log"

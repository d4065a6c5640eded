"""What every bench stage shares: the targets and constants, logging, page-cache warming, the lab VSN the
stages deploy on (tests.lab.vsn.PodmanVSN, with migrator's CLI timed) and the flat plans they deploy."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.measure import Result, median, run, shell
from tests.lab.vsn import REPO, PodmanVSN

try:  # migrator's own tar argv: the "same flags" peers run GNU tar exactly as migrator does
    from migrator.archive.capture import tar_create_argv
    from migrator.archive.extract import tar_extract_argv
except ImportError:  # renamed upstream: those informational peers are skipped
    tar_create_argv = tar_extract_argv = None

MIGRATOR = REPO / ".venv" / "bin" / "migrator"
BUSYBOX = "localhost/migrator-busybox:latest"
WRITER = "localhost/migrator-writer:latest"
VSN_NAME = "bench"
BASE = Path("/var/tmp/migrator-bench")
OUT = REPO / "bench" / "out"
MIB = 1024 * 1024
ZSTD_LEVEL = 3  # migrator's default backup.compression_level; the peers use the same
RSS_SCALE = 3  # the second data set for the RSS flatness check is this many times --size-gb
LOAD_SHARE = 0.01  # the downtime load changes this fraction of the data set's bytes
RACY_WAIT_S = 2.5  # > treestate.RACY_SLACK_NS (2 s): a fresh copy's files must not all look "changed"
BUSY_LOAD = 3.0  # the bench alone keeps the 1-min load average around 1-2.5 on 2 CPUs
# backup --json "downtime_steps" keys, in the order they happen (stack/quiesce.py).
DOWNTIME_STEPS = ("stop", "stopped", "settle", "start", "healthy")
TARGETS = {"backup": 0.9, "restore": 0.9, "rss_mb": 150.0, "rss_flat": 1.15, "downtime": 0.1}
T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def rotate(items: list, k: int) -> list:
    k %= len(items)
    return items[k:] + items[:k]


def fstype(path: Path) -> str:
    return subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "--target", str(path)], capture_output=True,
                          text=True).stdout.strip()


def warm(tree: Path) -> None:
    """Read every byte once (untimed) so all commands are measured with a warm page cache. Through `cat`:
    GNU tar writing to /dev/null itself skips reading file contents."""
    started = time.monotonic()
    shell(f"tar -c -C '{tree}' . | cat > /dev/null")
    log(f"warmed page cache for {tree} in {time.monotonic() - started:.1f} s")


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def rotated_run(i: int, tools: dict, before, after) -> dict:
    """Run `i` of a stage: the load average, then every tool once, in an order rotated by `i` (no tool always
    goes first); `before(name)` right before a tool, `after(name, result)` right after it."""
    row = {"loadavg": loadavg()}
    for name in rotate(list(tools), i):
        before(name)
        row[name] = tools[name]()
        after(name, row[name])
    return row


def quoted(argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)


def rmtree(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)


def fmt_s(v, mib=None):
    if v is None:
        return "-"
    return f"{v:.2f} s" + (f" ({mib / v:.0f} MiB/s)" if mib else "")


def per_run(runs: list[dict], ratio) -> float:
    """Median of the per-run ratios: each run measures both sides back to back (in alternating order),
    so a ratio compares two measurements taken under the same machine load."""
    return median([ratio(r) for r in runs])


def flat_plan(sock: str, data_root: Path, writer: dict | None = None) -> dict:
    """One volume `vol` (data dir `<data_root>/vol/data`, mounted at /data); optionally one writer service."""
    plan = {"version": 1,
            "vsn": {"name": VSN_NAME, "engine": "podman", "socket": sock, "data_root": str(data_root)},
            "volumes": [{"name": "vol", "image": BUSYBOX, "mounts": [{"name": "data", "path": "/data"}]}],
            "services": []}
    if writer is not None:
        plan["services"].append(writer)
    return plan


def writer_service(port: int, quiesce: str) -> dict:
    return {"name": "w", "image": WRITER, "volumes_from": ["vol"], "ports": [{"host": port, "container": 8081}],
            "health": {"type": "tcp", "port": 8081, "timeout": 60}, "quiesce": quiesce}


@dataclass
class BenchVSN(PodmanVSN):
    """The lab VSN (one engine for the whole run, in the bench's own dir, so `stop` removes everything the
    bench deployed), with migrator's CLI timed and what is deployed remembered."""

    deployed: str | None = None

    def start(self) -> BenchVSN:
        if self.base.exists():  # debris of a killed bench run
            self.stop()
        self.base.mkdir(parents=True)
        super().start()
        (self.base / "plans").mkdir(exist_ok=True)
        return self

    def env(self) -> dict[str, str]:
        env = super().env()
        env.pop("MIGRATOR_PROGRESS", None)
        return env

    def timed(self, *args: str, check: bool = True) -> Result:
        return run([str(MIGRATOR), *args], env=self.env(), check=check)

    def migrator_json(self, *args: str) -> tuple[Result, dict]:
        res = self.timed(*args, "--json")
        return res, json.loads(res.stdout)

    def deploy(self, name: str, plan: dict) -> None:
        """Teardown whatever is deployed, then deploy `plan` (written to plans/<name>.json)."""
        if self.deployed is not None:
            self.timed("teardown")
            self.deployed = None
        path = self.base / "plans" / f"{name}.json"
        path.write_text(json.dumps(plan, indent=2))
        self.timed("deploy", str(path))
        self.deployed = name

    def teardown(self) -> None:
        if self.deployed is not None:
            self.timed("teardown", check=False)
            self.deployed = None

    def stop(self) -> None:
        super().stop()
        self.deployed = None

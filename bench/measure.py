"""Running one command and measuring it: wall time (monotonic clock) and the peak RSS of its process tree.

Peak RSS comes from GNU time (`/usr/bin/time -f %M`), which reports ru_maxrss of the command: the
largest single process of its tree (not a sum), i.e. for `migrator` the Python process (tar and age are
far smaller), for a shell pipeline its largest stage. Not `os.wait4` from this process: on exec Linux
folds the pre-exec memory image's high-water mark into the child's maxrss, so every child forked from
this (large) Python process would report at least this process's RSS. GNU time is small, so its floor is
~2 MB. Output goes to files, never to a pipe we read while the child runs.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass

GNU_TIME = "/usr/bin/time"  # Debian package `time`


@dataclass
class Result:
    argv: list[str]
    wall_s: float
    maxrss_kb: int
    cpu_s: float  # user + system CPU of the whole tree (GNU time: %U + %S of the waited-for children)
    rc: int
    stdout: str
    stderr: str

    @property
    def maxrss_mb(self) -> float:
        return self.maxrss_kb / 1024

    def check(self) -> Result:
        if self.rc != 0:
            raise RuntimeError(f"command failed (exit {self.rc}): {' '.join(self.argv)}\n"
                               f"stdout: {self.stdout[-2000:]}\nstderr: {self.stderr[-2000:]}")
        return self


def run(argv: list[str], *, env: dict | None = None, cwd: str | None = None, check: bool = True) -> Result:
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile(mode="r") as rss:
        started = time.monotonic()
        proc = subprocess.run([GNU_TIME, "-f", "%M %U %S", "-o", rss.name, *argv], env=env, cwd=cwd,
                              stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        wall = time.monotonic() - started
        out.seek(0)
        err.seek(0)
        fields = (rss.read().strip().splitlines() or [""])[-1].split()  # "Command exited ..." may come first
        maxrss, cpu = (int(fields[0]), float(fields[1]) + float(fields[2])) if len(fields) == 3 else (0, 0.0)
        result = Result(list(argv), wall, maxrss, cpu, proc.returncode,
                        out.read().decode("utf-8", "replace"), err.read().decode("utf-8", "replace"))
    return result.check() if check else result


def shell(script: str, **kwargs) -> Result:
    return run(["bash", "-c", "set -euo pipefail; " + script], **kwargs)


def sync() -> None:
    """Flush dirty pages (untimed) so the next measured command does not compete with earlier writeback."""
    os.sync()


def median(values: list[float]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def du_bytes(path: str) -> int:
    out = subprocess.run(["du", "-sb", path], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def run_stamped(argv: list[str], *, env: dict | None = None) -> tuple[Result, list[tuple[float, str]]]:
    """Like `run` (no RSS), but stderr lines are time-stamped (seconds since start) as they arrive:
    migrator's step lines (MIGRATOR_PROGRESS=1) give the phases of a backup."""
    lines: list[tuple[float, str]] = []
    with tempfile.TemporaryFile() as out:
        started = time.monotonic()
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.PIPE)

        def pump() -> None:
            for raw in proc.stderr:
                lines.append((time.monotonic() - started, raw.decode("utf-8", "replace").rstrip()))

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        rc = proc.wait()
        wall = time.monotonic() - started
        reader.join(10)
        proc.stderr.close()
        out.seek(0)
        result = Result(list(argv), wall, 0, 0.0, rc, out.read().decode("utf-8", "replace"),
                        "\n".join(line for _, line in lines))
    return result.check(), lines

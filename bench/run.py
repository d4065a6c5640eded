"""migrator benchmark harness: ratios against tar|zstd (and restic/borg when installed) on the same data.

    .venv/bin/python -m bench.run [--size-gb 1] [--runs 3] [--only backup,restore,rss,downtime,incremental]

Prints a table of medians over --runs and writes bench/out/results.json. See bench/README.md for what each
number means. Not part of the test suite; nothing here asserts a wall-clock time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench import backup, dataset, downtime, incremental, restore, rss
from bench.common import BASE, BUSY_LOAD, MIB, OUT, RSS_SCALE, T0, BenchVSN, fstype, log, rmtree
from bench.fs import GIB, LoopFS
from tests.lab.vsn import REPO

# The stages, in the order they run: each module has run_stage(bench) (appending its rows to
# bench.raw[name]) and summarize(bench, add, data_mib) (its table rows).
STAGES = {"backup": backup, "restore": restore, "rss": rss, "downtime": downtime, "incremental": incremental}


class Bench:
    def __init__(self, args):
        self.args = args
        self.scale = args.size_gb
        self.base = Path(args.base)
        self.work = self.base / "work"
        self.vsn = BenchVSN(base=self.base / "vsn")
        self.ds1_root = self.base / f"ds-{self.scale:g}"
        self.ds3_root = self.base / f"ds-{self.scale * RSS_SCALE:g}"
        self.ds1 = self.ds1_root / "vol" / "data"
        self.ds3 = self.ds3_root / "vol" / "data"
        self.p1 = dataset.Params(scale=self.scale)
        self.p3 = dataset.Params(scale=self.scale * RSS_SCALE)
        self.info1: dict = {}
        self.info3: dict = {}
        self.raw: dict = {s: [] for s in STAGES}
        self.peers = {"restic": shutil.which("restic"), "borg": shutil.which("borg")}
        self.store1 = self.work / "store-1x"
        # data sets (1x + 3x = ~4.2 GiB per --size-gb) + the largest stage's work files (~5 GiB per --size-gb)
        size = int((16 + 12 * self.scale) * GIB)
        self.fs = LoopFS(self.base.parent / f"{self.base.name}.img", self.base, size, log) if args.fs == "loop" else None
        self.peer_file = self.work / "peer-1x.tar.zst"

    def run(self, stages: list[str]) -> dict:
        if fstype(self.base.parent) == "tmpfs":
            raise SystemExit(f"{self.base.parent} is on tmpfs: pick a disk-backed --base")
        if self.fs is not None:
            self.fs.mount()
        try:
            return self._run(stages)
        finally:
            if self.fs is not None:
                self.fs.unmount()

    def _run(self, stages: list[str]) -> dict:
        self.base.mkdir(parents=True, exist_ok=True)
        fs = fstype(self.base)
        rmtree(self.work)
        self.work.mkdir(parents=True)
        self.info1 = dataset.ensure(self.ds1_root, self.p1, log)
        if "rss" in stages:
            self.info3 = dataset.ensure(self.ds3_root, self.p3, log)
        subprocess.run([str(REPO / "lab" / "build-images.sh"), "busybox", "writer"], check=True,
                       capture_output=True)
        started = time.monotonic()
        try:
            self.vsn.start()
            for name, stage in STAGES.items():
                if name in stages:
                    log(f"--- {name}")
                    stage.run_stage(self)
        finally:
            self.vsn.teardown()
            self.vsn.stop()
            rmtree(self.work)
            log("VSN purged, work dir removed")
        return {"measured_s": round(time.monotonic() - started, 1), "fs": fs,
                "fs_image": str(self.fs.image) if self.fs else None}


def summarize(b: Bench, stages: list[str]) -> list[dict]:
    rows = []
    data_mib = b.info1.get("bytes", 0) / MIB

    def add(metric, mig, peer, ratio, target, ok):
        rows.append({"metric": metric, "migrator": mig, "peer": peer,
                     "ratio": None if ratio is None else round(ratio, 3), "target": target,
                     "pass": None if ok is None else bool(ok)})

    for name, stage in STAGES.items():
        if name in stages and b.raw[name]:
            stage.summarize(b, add, data_mib)
    return rows


def print_table(rows: list[dict]) -> None:
    head = ["metric", "migrator", "peer", "ratio", "target", "pass"]
    cells = [[r["metric"], r["migrator"], r["peer"], "-" if r["ratio"] is None else f"{r['ratio']:.2f}",
              r["target"], {True: "PASS", False: "FAIL", None: "-"}[r["pass"]]] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *cells, strict=False)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    print(line.format(*head))
    print(line.format(*("-" * w for w in widths)))
    for c in cells:
        print(line.format(*c))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-gb", type=float, default=1.0, help="data set size scale (1 = ~1.04 GiB)")
    ap.add_argument("--runs", type=int, default=3, help="runs per measurement; the table shows medians")
    ap.add_argument("--only", default=",".join(STAGES), help="comma-separated stages: " + ",".join(STAGES))
    ap.add_argument("--chain", type=int, default=30,
                    help="incremental stage: daily incrementals in the chain whose newest is restored")
    ap.add_argument("--base", default=str(BASE), help="work and data set directory (disk-backed, short path)")
    ap.add_argument("--fs", choices=("loop", "host"), default="loop",
                    help="loop (default): a journaled ext4 image loop-mounted on --base (see bench/fs.py); "
                         "host: --base on the host filesystem as it is")
    args = ap.parse_args()
    stages = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [s for s in stages if s not in STAGES]
    if bad or args.runs < 1 or args.chain < 1:
        ap.error(f"unknown stage(s) {bad}" if bad else "--runs and --chain must be >= 1")
    if os.geteuid() != 0:
        ap.error("run as root (podman VSN engine, restore preserves owners)")

    bench = Bench(args)

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    meta = bench.run(stages)
    rows = summarize(bench, stages)
    total = round(time.monotonic() - T0, 1)
    print()
    print(f"migrator bench: data set {bench.info1['bytes'] / MIB:.0f} MiB in {bench.info1['files']} files "
          f"(--size-gb {args.size_gb:g}), medians of {args.runs} runs, total {total} s")
    loads = [r["loadavg"] for rows_ in bench.raw.values() for r in rows_ if "loadavg" in r]
    if loads:
        busy = max(loads) > BUSY_LOAD
        print(f"1-min load average at the start of each run: {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} "
              f"CPUs" + (" (above what the bench alone causes: other work competed, wall times are noisy)"
                         if busy else ""))
    print_table(rows)
    OUT.mkdir(parents=True, exist_ok=True)
    result = {"command": " ".join([".venv/bin/python", "-m", "bench.run", *sys.argv[1:]]), "stages": stages,
              "runs": args.runs, "size_gb": args.size_gb, "total_s": total, **meta,
              "dataset_1x": bench.info1, "dataset_3x": bench.info3 or None, "table": rows, "raw": bench.raw,
              "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
                          "tools": _versions()}}
    text = json.dumps(result, indent=2)
    (OUT / "results.json").write_text(text)
    # a partial run (--only) must not lose an earlier full run's numbers: every run also keeps its own file
    (OUT / time.strftime("results-%Y%m%dT%H%M%S.json")).write_text(text)
    print(f"\nwrote {OUT / 'results.json'}")
    return 0


def _versions() -> dict:
    out = {}
    for tool, argv in {"tar": ["tar", "--version"], "zstd": ["zstd", "--version"], "restic": ["restic", "version"],
                       "borg": ["borg", "--version"], "podman": ["podman", "--version"]}.items():
        try:
            out[tool] = subprocess.run(argv, capture_output=True, text=True).stdout.splitlines()[0]
        except (OSError, IndexError):
            out[tool] = None
    return out


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""migrator benchmark harness: ratios against tar|zstd (and restic/borg when installed) on the same data.

    .venv/bin/python bench/run.py [--size-gb 1] [--runs 3] [--only backup,restore,rss,downtime,incremental]

Prints a table of medians over --runs and writes bench/out/results.json. See bench/README.md for what each
number means. Not part of the test suite; nothing here asserts a wall-clock time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dataset  # noqa: E402
import incremental  # noqa: E402
from fs import GIB, LoopFS  # noqa: E402
from load import Load  # noqa: E402
from measure import du_bytes, median, run, run_stamped, shell, sync  # noqa: E402
from vsn import MIGRATOR, REPO, VSN, flat_plan, free_port, writer_service  # noqa: E402

try:  # migrator's own tar argv: the "same flags" peers run GNU tar exactly as migrator does
    from migrator.archive.capture import tar_create_argv
    from migrator.archive.extract import tar_extract_argv
except ImportError:  # renamed upstream: those informational peers are skipped
    tar_create_argv = tar_extract_argv = None

STAGES = ("backup", "restore", "rss", "downtime", "incremental")
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


def quoted(argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)


def _phases(lines: list[tuple[float, str]], downtime: float | None) -> dict:
    """Split a service's downtime with migrator's step lines ("stopping w", "starting w"): the stopped
    window (stop + whatever migrator does with the writer down: re-scan, diff and phase-2 archive, or the
    whole archive in stop mode) and the restart (start + health probe until healthy)."""
    t_stop = next((t for t, line in lines if line.endswith("stopping w")), None)
    t_start = next((t for t, line in lines if line.endswith("starting w")), None)
    if t_stop is None or t_start is None or downtime is None:
        return {}
    return {"stopped_window_s": round(t_start - t_stop, 3), "start_probe_s": round(downtime - (t_start - t_stop), 3)}


def rmtree(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)


class Bench:
    def __init__(self, args):
        self.args = args
        self.scale = args.size_gb
        self.base = Path(args.base)
        self.work = self.base / "work"
        self.vsn = VSN(self.base / "vsn")
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

    # -- backup throughput ---------------------------------------------------------------------------------

    def _mig_backup(self, store: Path) -> dict:
        rmtree(store)
        sync()
        res, out = self.vsn.migrator_json("backup", "--to", f"file://{store}")
        return {"wall_s": res.wall_s, "cpu_s": res.cpu_s, "rss_mb": res.maxrss_mb, "size": out["size"],
                "uncompressed": out["uncompressed"], "internal_s": out["duration"]}

    def _tar_backup(self, tree: Path, dest: Path, same_flags: bool = False) -> dict:
        dest.unlink(missing_ok=True)
        sync()
        # same_flags: GNU tar with migrator's exact argv (pax format, xattrs, ACLs, sparse) on the volume dir
        tar = quoted(tar_create_argv(tree.parent, False)) if same_flags else f"tar -c -C '{tree}' ."
        res = shell(f"{tar} | zstd -q -T0 -{ZSTD_LEVEL} > '{dest}'")
        fs = run(["sync", str(dest)])  # what migrator's file store does on commit (fsync), timed apart
        return {"wall_s": res.wall_s, "cpu_s": res.cpu_s, "rss_mb": res.maxrss_mb, "size": dest.stat().st_size,
                "fsync_s": fs.wall_s}

    def _restic_backup(self, tree: Path) -> dict:
        repo, cache = self.work / "restic-repo", self.work / "restic-cache"
        rmtree(repo)
        rmtree(cache)
        env = dict(os.environ, RESTIC_PASSWORD="bench", RESTIC_CACHE_DIR=str(cache))
        run(["restic", "-r", str(repo), "init", "--repository-version", "2"], env=env)
        sync()
        res = run(["restic", "-r", str(repo), "backup", "-q", str(tree)], env=env)
        return {"wall_s": res.wall_s, "cpu_s": res.cpu_s, "rss_mb": res.maxrss_mb, "size": du_bytes(str(repo))}

    def _borg_backup(self, tree: Path) -> dict:
        repo, home = self.work / "borg-repo", self.work / "borg-base"
        rmtree(repo)
        rmtree(home)
        env = dict(os.environ, BORG_BASE_DIR=str(home), BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes",
                   BORG_RELOCATED_REPO_ACCESS_IS_OK="yes", BORG_PASSPHRASE="")
        run(["borg", "init", "-e", "none", str(repo)], env=env)
        sync()
        res = run(["borg", "create", "--compression", f"zstd,{ZSTD_LEVEL}", f"{repo}::bench", "."], env=env,
                  cwd=str(tree))
        return {"wall_s": res.wall_s, "cpu_s": res.cpu_s, "rss_mb": res.maxrss_mb, "size": du_bytes(str(repo))}

    def stage_backup(self) -> None:
        self.vsn.deploy("bench-1x", flat_plan(self.vsn.sock, self.ds1_root))
        warm(self.ds1)
        tools = {"migrator": lambda: self._mig_backup(self.store1),
                 "tar|zstd": lambda: self._tar_backup(self.ds1, self.peer_file)}
        if tar_create_argv is not None:
            tools["tar(migrator flags)|zstd"] = lambda: self._tar_backup(self.ds1, self.work / "peer-flags.tar.zst",
                                                                         same_flags=True)
        if self.peers["restic"]:
            tools["restic"] = lambda: self._restic_backup(self.ds1)
        if self.peers["borg"]:
            tools["borg"] = lambda: self._borg_backup(self.ds1)
        for i in range(self.args.runs):
            row = {"loadavg": loadavg()}
            for name in rotate(list(tools), i):
                # Re-warmed before every command: restic and borg write ~0.6 GiB each, and on this VM the
                # command after them read part of the tree from disk again (1.5-2 s slower, whoever it was).
                warm(self.ds1)
                row[name] = tools[name]()
                log(f"backup run {i + 1}: {name} {row[name]['wall_s']:.2f} s (cpu {row[name]['cpu_s']:.2f} s), "
                    f"{row[name]['size'] / MIB:.0f} MiB, rss {row[name]['rss_mb']:.0f} MB")
            self.raw["backup"].append(row)
        (self.work / "peer-flags.tar.zst").unlink(missing_ok=True)
        rmtree(self.work / "restic-repo")
        rmtree(self.work / "borg-repo")
        rmtree(self.work / "restic-cache")
        rmtree(self.work / "borg-base")

    # -- restore throughput --------------------------------------------------------------------------------

    def _ensure_snapshot(self) -> None:
        if not (self.store1.exists() and self.peer_file.exists()):
            self.vsn.deploy("bench-1x", flat_plan(self.vsn.sock, self.ds1_root))
            warm(self.ds1)
            self._mig_backup(self.store1)
            self._tar_backup(self.ds1, self.peer_file)

    def _mig_restore(self, store: Path, dest: Path) -> dict:
        rmtree(dest)
        sync()
        res, out = self.vsn.migrator_json("restore", "latest", "--from", f"file://{store}", "--into", str(dest))
        return {"wall_s": res.wall_s, "cpu_s": res.cpu_s, "rss_mb": res.maxrss_mb, "files": out.get("files"),
                "internal_s": out.get("duration")}

    def _tar_restore(self, src: Path, dest: Path, same_flags: bool = False, verify: bool = False) -> dict:
        """`zstd -d | tar -x` of `src` into a fresh `dest`. `verify`: the peer as a restore that verifies,
        the object's sha256 (what migrator checks against its manifest) taken by `openssl dgst -sha256`
        beside it, in parallel, the cheapest arrangement (both read the object from the page cache; no tee
        copy). OpenSSL's SHA-256 is the one migrator's hashlib uses; coreutils' sha256sum (9.1) is ~4x
        slower and would flatter migrator."""
        rmtree(dest)
        dest.mkdir(parents=True)
        sync()
        # same_flags: migrator's argv for this object (the data set has no ACLs, so no --acls, as migrator)
        tar = quoted(tar_extract_argv(dest, acls=False)) if same_flags else f"tar -x -C '{dest}'"
        pipeline = f"zstd -d -q -c '{src}' | {tar}"
        if verify:
            pipeline = f"openssl dgst -sha256 '{src}' > /dev/null & h=$!; {pipeline}; wait $h"
        res = shell(pipeline)
        return {"wall_s": res.wall_s, "cpu_s": res.cpu_s, "rss_mb": res.maxrss_mb}

    def _same_tree(self, a: Path, b: Path, metadata: bool) -> bool:
        """A restored tree equals the data set: same names and contents (`diff -r`) and, with `metadata`, same
        type, mode, owner, size, mtime (ns) and link target per path. Only migrator's restore is held to
        the metadata: plain `tar -c` (GNU format) stores whole-second mtimes."""
        if subprocess.run(["diff", "-r", "-q", str(a), str(b)], capture_output=True).returncode != 0:
            return False
        if not metadata:
            return True

        def listing(root: Path) -> list[str]:
            out = subprocess.run(["find", str(root), "-printf", r"%P\t%y\t%m\t%U\t%G\t%s\t%T@\t%l\n"],
                                 capture_output=True, text=True, check=True).stdout
            return sorted(line for line in out.splitlines() if not line.startswith("\t"))  # the root itself: skip

        return listing(a) == listing(b)

    def stage_restore(self) -> None:
        self._ensure_snapshot()
        dm, dp = self.work / "restore-migrator", self.work / "restore-peer"
        df = self.work / "restore-flags"
        dv = self.work / "restore-verified"
        tools = {"migrator": lambda: self._mig_restore(self.store1, dm),
                 "zstd|tar": lambda: self._tar_restore(self.peer_file, dp),
                 "zstd|tar+sha256": lambda: self._tar_restore(self.peer_file, dv, verify=True)}
        if tar_extract_argv is not None:
            # migrator's own object, extracted by GNU tar with migrator's flags, minus migrator's
            # verify-and-re-emit layer (sha256, member checks, pax rewrite) in between
            obj = next(self.store1.rglob("vol.tar.zst"))
            tools["zstd|tar(migrator flags)"] = lambda: self._tar_restore(obj, df, same_flags=True)
        objects = [self.peer_file, *self.store1.rglob("vol.tar.zst")]
        dests = {"migrator": dm, "zstd|tar": dp, "zstd|tar(migrator flags)": df, "zstd|tar+sha256": dv}
        # The first run's check of each restored tree: migrator's held to metadata too, the peer's to contents.
        checks = {"migrator": lambda: self._same_tree(self.ds1, dm / "vol" / "data", metadata=True),
                  "zstd|tar": lambda: self._same_tree(self.ds1, dp, metadata=False)}
        for i in range(self.args.runs):
            row = {"loadavg": loadavg()}
            same = []
            for name in rotate(list(tools), i):
                for obj in objects:  # both objects read from the page cache, as the tree is for backup
                    shell(f"cat '{obj}' > /dev/null")
                row[name] = tools[name]()
                log(f"restore run {i + 1}: {name} {row[name]['wall_s']:.2f} s (cpu {row[name]['cpu_s']:.2f} s), "
                    f"rss {row[name]['rss_mb']:.0f} MB")
                if i == 0 and name in checks:
                    same.append(checks[name]())
                # Each extraction starts on the same (emptied) filesystem: with earlier trees still on it,
                # the same extraction took up to 3x as long (see README, "restore noise").
                rmtree(dests[name])
                sync()
            if i == 0:
                row["identical"] = all(same) and len(same) == len(checks)
                log(f"restored trees identical to the data set: {row['identical']}")
            self.raw["restore"].append(row)

    # -- peak RSS at 1x and 3x -----------------------------------------------------------------------------

    def stage_rss(self) -> None:
        store3, dest3 = self.work / "store-3x", self.work / "restore-3x"
        need_1x = not self.raw["backup"] or not self.raw["restore"]
        for i in range(self.args.runs):
            row = {"loadavg": loadavg()}
            if need_1x:
                self._ensure_snapshot()
                if self.vsn.deployed != "bench-1x":
                    self.vsn.deploy("bench-1x", flat_plan(self.vsn.sock, self.ds1_root))
                if i == 0:
                    warm(self.ds1)
                row["backup_1x"] = self._mig_backup(self.store1)
                row["restore_1x"] = self._mig_restore(self.store1, self.work / "restore-1x")
                rmtree(self.work / "restore-1x")
            self.vsn.deploy("bench-3x", flat_plan(self.vsn.sock, self.ds3_root))
            if i == 0:
                warm(self.ds3)
            row["backup_3x"] = self._mig_backup(store3)
            row["restore_3x"] = self._mig_restore(store3, dest3)
            rmtree(dest3)
            log(f"rss run {i + 1}: backup 3x {row['backup_3x']['rss_mb']:.0f} MB "
                f"({row['backup_3x']['wall_s']:.1f} s), restore 3x {row['restore_3x']['rss_mb']:.0f} MB "
                f"({row['restore_3x']['wall_s']:.1f} s)")
            self.raw["rss"].append(row)
        rmtree(store3)

    # -- downtime: two-phase vs stop -----------------------------------------------------------------------

    def _phase1_estimate(self) -> float:
        walls = [r["migrator"]["wall_s"] for r in self.raw["backup"]]
        whole = median(walls) if walls else self.info1["bytes"] / (120 * MIB)
        return max(2.0, 0.7 * whole)

    def _downtime_once(self, variant: str, port: int) -> dict:
        """One backup of a fresh copy of the 1x set with the writer deployed. variant: "two-phase" or "stop"
        (with the 1% load), or "two-phase-idle" (no load: the floor of a two-phase stop, start and probe)."""
        mode = variant.removesuffix("-idle")
        root = self.work / "dt"
        self.vsn.teardown()
        rmtree(root)
        (root / "vol").mkdir(parents=True)
        subprocess.run(["cp", "-a", str(self.ds1), str(root / "vol" / "data")], check=True)
        sync()
        self.vsn.deploy(f"downtime-{mode}", flat_plan(self.vsn.sock, root, writer_service(port, mode)))
        # Files copied in the last 2 s would count as changed (treestate's racy-entry rule): let them age.
        time.sleep(RACY_WAIT_S)
        store = self.work / "store-dt"
        rmtree(store)
        load = None
        if not variant.endswith("-idle"):
            load = Load(root / "vol" / "data", dataset.small_file_paths(self.p1), dataset.db_file_paths()[0],
                        int(self.info1["bytes"] * LOAD_SHARE), self._phase1_estimate(), port)
            load.start()
        try:
            env = dict(self.vsn.env, MIGRATOR_PROGRESS="1")  # step lines on stderr, time-stamped as they come
            res, lines = run_stamped([str(MIGRATOR), "backup", "--to", f"file://{store}", "--json"], env=env)
        finally:
            changes = load.stop() if load is not None else None
        out = json.loads(res.stdout)
        phase2 = [o for o in out["objects"] if o.get("phase") == 2]
        row = {"downtime_s": out["downtime"].get("w"), "wall_s": res.wall_s, "mode": out["volumes"]["vol"]["mode"],
               "downtime_steps": out.get("downtime_steps", {}).get("w"),
               "load": changes, "phases": _phases(lines, out["downtime"].get("w")),
               "steps": [f"{t:.3f} {line}" for t, line in lines if line.startswith("migrator: ")],
               "phase2_uncompressed": sum(o["uncompressed"] for o in phase2) if phase2 else None,
               "phase2_files": sum(o["files"] for o in phase2) if phase2 else None}
        rmtree(store)
        return row

    def stage_downtime(self) -> None:
        port = free_port()
        for i in range(self.args.runs):
            row = {"loadavg": loadavg()}
            for variant in rotate(["two-phase", "stop", "two-phase-idle"], i):
                row[variant] = r = self._downtime_once(variant, port)
                load = r["load"] or {"bytes_written": 0, "files_rewritten": 0, "stopped_by": "no load"}
                log(f"downtime run {i + 1}: {variant} downtime {r['downtime_s']} s (backup {r['wall_s']:.1f} s, "
                    f"load {load['bytes_written'] / MIB:.1f} MiB / {load['files_rewritten']} files, "
                    f"stopped by {load['stopped_by']}; phase 2: {r['phase2_files']} files, "
                    f"{(r['phase2_uncompressed'] or 0) / MIB:.0f} MiB; phases {r['phases']})")
            self.raw["downtime"].append(row)
        self.vsn.teardown()
        rmtree(self.work / "dt")

    # -- incremental snapshots: 2nd backup vs restic and tar -g; restore at the end of a chain (incremental.py)

    def stage_incremental(self) -> None:
        incremental.Stage(self, incremental.Helpers(log, warm, loadavg, rotate, RACY_WAIT_S)).run()

    # -- the whole run -------------------------------------------------------------------------------------

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
            for stage in STAGES:
                if stage in stages:
                    log(f"--- {stage}")
                    getattr(self, f"stage_{stage}")()
        finally:
            self.vsn.teardown()
            self.vsn.purge()
            rmtree(self.work)
            log("VSN purged, work dir removed")
        return {"measured_s": round(time.monotonic() - started, 1), "fs": fs,
                "fs_image": str(self.fs.image) if self.fs else None}


# -- summary -------------------------------------------------------------------------------------------------

def _fmt_s(v, mib=None):
    if v is None:
        return "-"
    return f"{v:.2f} s" + (f" ({mib / v:.0f} MiB/s)" if mib else "")


def per_run(runs: list[dict], ratio) -> float:
    """Median of the per-run ratios: each run measures both sides back to back (in alternating order),
    so a ratio compares two measurements taken under the same machine load."""
    return median([ratio(r) for r in runs])


def summarize(b: Bench, stages: list[str]) -> list[dict]:
    rows = []
    data_mib = b.info1.get("bytes", 0) / MIB

    def add(metric, mig, peer, ratio, target, ok):
        rows.append({"metric": metric, "migrator": mig, "peer": peer,
                     "ratio": None if ratio is None else round(ratio, 3), "target": target,
                     "pass": None if ok is None else bool(ok)})

    if "backup" in stages and b.raw["backup"]:
        runs = b.raw["backup"]
        m = median([r["migrator"]["wall_s"] for r in runs])
        mc = median([r["migrator"]["cpu_s"] for r in runs])
        t = median([r["tar|zstd"]["wall_s"] for r in runs])
        ratio = per_run(runs, lambda r: r["tar|zstd"]["wall_s"] / r["migrator"]["wall_s"])
        add("backup time vs tar|zstd -T0 -3", _fmt_s(m, data_mib), _fmt_s(t, data_mib), ratio,
            f">= {TARGETS['backup']}", ratio >= TARGETS["backup"])
        tf = median([r["tar|zstd"]["wall_s"] + r["tar|zstd"]["fsync_s"] for r in runs])
        add("  same, peer + fsync of its output (info)", _fmt_s(m), _fmt_s(tf),
            per_run(runs, lambda r: (r["tar|zstd"]["wall_s"] + r["tar|zstd"]["fsync_s"]) / r["migrator"]["wall_s"]),
            "info", None)
        if "tar(migrator flags)|zstd" in runs[0]:
            k = "tar(migrator flags)|zstd"
            tm = median([r[k]["wall_s"] + r[k]["fsync_s"] for r in runs])
            add("  same, peer with migrator's tar flags + fsync (info)", _fmt_s(m), _fmt_s(tm),
                per_run(runs, lambda r: (r[k]["wall_s"] + r[k]["fsync_s"]) / r["migrator"]["wall_s"]), "info", None)
        mi = median([r["migrator"]["internal_s"] for r in runs])
        add("  migrator's own 'duration' (no CLI start-up) vs peer + fsync (info)", _fmt_s(mi), _fmt_s(tf),
            per_run(runs, lambda r: (r["tar|zstd"]["wall_s"] + r["tar|zstd"]["fsync_s"]) / r["migrator"]["internal_s"]),
            "info", None)
        tc = median([r["tar|zstd"]["cpu_s"] for r in runs])
        add("  CPU seconds (user+sys), ratio = peer/migrator (info)", f"{mc:.2f} s", f"{tc:.2f} s",
            per_run(runs, lambda r: r["tar|zstd"]["cpu_s"] / r["migrator"]["cpu_s"]), "info", None)
        ms = median([r["migrator"]["size"] for r in runs]) / MIB
        ts = median([r["tar|zstd"]["size"] for r in runs]) / MIB
        add("backup size, ratio = peer/migrator (info)", f"{ms:.1f} MiB ({data_mib / ms:.2f}x)",
            f"{ts:.1f} MiB ({data_mib / ts:.2f}x)", ts / ms, "info", None)
        for peer in ("restic", "borg"):
            if peer in runs[0]:
                p = median([r[peer]["wall_s"] for r in runs])
                ps = median([r[peer]["size"] for r in runs]) / MIB
                add(f"backup time vs {peer} (repo {ps:.0f} MiB) (info)", _fmt_s(m, data_mib), _fmt_s(p, data_mib),
                    per_run(runs, lambda r, peer=peer: r[peer]["wall_s"] / r["migrator"]["wall_s"]), "info", None)
            else:
                add(f"backup time vs {peer} (info)", _fmt_s(m), "not installed", None, "info", None)
    if "restore" in stages and b.raw["restore"]:
        runs = b.raw["restore"]
        m = median([r["migrator"]["wall_s"] for r in runs])
        t = median([r["zstd|tar"]["wall_s"] for r in runs])
        ratio = per_run(runs, lambda r: r["zstd|tar"]["wall_s"] / r["migrator"]["wall_s"])
        add("restore time vs zstd -d|tar -x", _fmt_s(m, data_mib), _fmt_s(t, data_mib), ratio,
            f">= {TARGETS['restore']}", ratio >= TARGETS["restore"])
        if "zstd|tar(migrator flags)" in runs[0]:
            k = "zstd|tar(migrator flags)"
            tm = median([r[k]["wall_s"] for r in runs])
            add("  same, migrator's object + migrator's tar -x flags (info)", _fmt_s(m), _fmt_s(tm),
                per_run(runs, lambda r: r[k]["wall_s"] / r["migrator"]["wall_s"]), "info", None)
        if "zstd|tar+sha256" in runs[0]:
            k = "zstd|tar+sha256"
            tv = median([r[k]["wall_s"] for r in runs])
            add("  same, the peer verifying too: openssl sha256 of its object beside it (info)", _fmt_s(m), _fmt_s(tv),
                per_run(runs, lambda r: r[k]["wall_s"] / r["migrator"]["wall_s"]), "info", None)
            add("  the peer's own cost of verifying: zstd|tar / zstd|tar+sha256 (info)", "", _fmt_s(tv),
                per_run(runs, lambda r: r["zstd|tar"]["wall_s"] / r[k]["wall_s"]), "info", None)
        mi = median([r["migrator"]["internal_s"] for r in runs])
        add("  migrator's own 'duration' (no CLI start-up) (info)", _fmt_s(mi), _fmt_s(t),
            per_run(runs, lambda r: r["zstd|tar"]["wall_s"] / r["migrator"]["internal_s"]), "info", None)
        mc = median([r["migrator"]["cpu_s"] for r in runs])
        tc = median([r["zstd|tar"]["cpu_s"] for r in runs])
        add("  CPU seconds (user+sys), ratio = peer/migrator (info)", f"{mc:.2f} s", f"{tc:.2f} s",
            per_run(runs, lambda r: r["zstd|tar"]["cpu_s"] / r["migrator"]["cpu_s"]), "info", None)
        ident = runs[0].get("identical")
        add("  restored = data set (contents; migrator also modes, owners, ns mtimes)", str(ident), str(ident), None,
            "True", bool(ident))
    if "rss" in stages and b.raw["rss"]:
        def rss_of(kind):
            one = [r[f"{kind}_1x"]["rss_mb"] for r in b.raw["rss"] if f"{kind}_1x" in r]
            if not one:
                one = [r["migrator"]["rss_mb"] for r in b.raw[kind]]
            three = [r[f"{kind}_3x"]["rss_mb"] for r in b.raw["rss"]]
            return median(one), median(three)
        peer_rss = {
            "backup": (median([r["tar|zstd"]["rss_mb"] for r in b.raw["backup"]]), "tar|zstd -T0")
            if b.raw["backup"] else None,
            "restore": (median([r["zstd|tar"]["rss_mb"] for r in b.raw["restore"]]), "zstd -d|tar")
            if b.raw["restore"] else None}
        for kind in ("backup", "restore"):
            one, three = rss_of(kind)
            peer = f"{peer_rss[kind][0]:.0f} MB ({peer_rss[kind][1]})" if peer_rss[kind] else "-"
            add(f"peak RSS {kind} 1x ({data_mib:.0f} MiB)", f"{one:.0f} MB", peer, None,
                f"<= {TARGETS['rss_mb']:.0f} MB", one <= TARGETS["rss_mb"])
            add(f"peak RSS {kind} {RSS_SCALE}x (ratio = 3x/1x)", f"{three:.0f} MB", f"{one:.0f} MB (1x)",
                three / one, f"<= {TARGETS['rss_mb']:.0f} MB, ratio <= {TARGETS['rss_flat']}",
                three <= TARGETS["rss_mb"] and three / one <= TARGETS["rss_flat"])
    if "downtime" in stages and b.raw["downtime"]:
        runs = b.raw["downtime"]
        tp = median([r["two-phase"]["downtime_s"] for r in runs])
        st = median([r["stop"]["downtime_s"] for r in runs])
        ratio = median([r["two-phase"]["downtime_s"] / r["stop"]["downtime_s"] for r in runs])
        add("downtime two-phase / stop (1% changed)", f"{tp:.2f} s (two-phase)", f"{st:.2f} s (stop)", ratio,
            f"<= {TARGETS['downtime']}", ratio <= TARGETS["downtime"])
        idle = median([r["two-phase-idle"]["downtime_s"] for r in runs])
        add("  two-phase, no load (floor: stop + scan + start + probe) (info)", f"{idle:.2f} s", f"{st:.2f} s (stop)",
            median([r["two-phase-idle"]["downtime_s"] / r["stop"]["downtime_s"] for r in runs]), "info", None)

        def part(variant, key):
            return median([r[variant]["phases"].get(key) for r in runs])

        p2 = median([r["two-phase"]["phase2_uncompressed"] or 0 for r in runs]) / MIB
        for variant, label in (("two-phase", f"two-phase, 1% load (phase 2 archived {p2:.0f} MiB)"),
                               ("two-phase-idle", "two-phase, no load"), ("stop", "stop, 1% load")):
            add(f"  {label}: writer-stopped window + start/probe (info)",
                f"{_fmt_s(part(variant, 'stopped_window_s'))} + {_fmt_s(part(variant, 'start_probe_s'))}",
                "", None, "info", None)
        for variant in ("two-phase", "two-phase-idle", "stop"):
            steps = [r[variant].get("downtime_steps") for r in runs]
            if all(steps):
                cells = " / ".join(f"{median([st[k] for st in steps]):.2f}" for k in DOWNTIME_STEPS)
                add(f"  {variant}: {' / '.join(DOWNTIME_STEPS)} (s, from backup --json) (info)", cells, "", None,
                    "info", None)
    if "incremental" in stages and b.raw["incremental"]:
        incremental.summarize(b.raw["incremental"], add, data_mib)
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
    result = {"command": " ".join([".venv/bin/python", "bench/run.py", *sys.argv[1:]]), "stages": stages,
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

"""The `incremental` stage: migrator's incremental snapshots against restic and GNU tar's listed-incremental.

Two parts, both on a private copy of the 1x data set (`work/inc/vol/data`, made once per stage: the change
steps must not touch the shared data set the other stages compare against):

1. **Second backup after ~1 % changed** (--runs times). Per run: fresh stores, an untimed base backup by
   each tool (migrator's full into an empty file store, `restic backup` into a fresh repo, `tar -c
   --listed-incremental` level 0), one seeded change step, then the timed second backups in an order that
   rotates every run: `migrator backup` (an incremental, parent = the base), `restic backup` (restic picks
   the base as its parent) and GNU tar level 1 (`--listed-incremental` on a copy of the level-0 snapshot
   file) through `zstd -T0 -3`. Store growth: `du -sb` of the store / repo before and after (migrator's own
   `size` beside it); tar's is its level-1 file.
2. **Restore at the end of a chain** (built once, restored --runs times). An empty store gets a full
   snapshot, then --chain daily incrementals, each after one change step; then the same final tree is
   backed up again into another empty store (a full snapshot). Timed: `migrator restore <head> --from
   <chain store>` and `migrator restore <full> --from <full store>`, each into an empty directory,
   alternating first; both stores are read once before each restore so both come from the page cache. The
   first run checks both restored trees against the live tree (`restore.same_tree`, metadata included).

A change step (`Changer.step`, seeded by its name, ~1 % of the data set's bytes; ~0.1 s at 1x) writes
through the filesystem like the services would, so mtimes and ctimes move as they really do:
- half of its bytes rewrite scattered 4-16 KiB runs of 4 KiB pages in place inside the three 200 MiB
  database files (`pwrite`, same record format as `dataset.py`), file size unchanged;
- 35 % is one new blob (PRNG data, incompressible) in `blobs/`;
- the rest are new small text files (1-16 KiB, cut from the data set's corpus) in existing directories.
After every change step (and after the copy) the stage waits RACY_WAIT_S: files changed within 2 s before
a scan start count as changed (treestate's racy-entry rule); a daily backup runs hours after the writes.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench import dataset
from bench.common import RACY_WAIT_S, flat_plan, loadavg, log, rotate, warm
from bench.measure import du_bytes, median, run, shell, sync
from bench.restore import same_tree
from tests.lab.vsn import REPO

MIB = 1024 * 1024
ZSTD_LEVEL = 3
CHANGE_SHARE = 0.01  # a change step writes this fraction of the data set's bytes
DB_SHARE, BLOB_SHARE = 0.50, 0.35  # of a step's bytes; the rest are new small files
PAGE = 4096
PAGES_MIN, PAGES_MAX = 1, 4  # one rewritten run: 4-16 KiB
# The chain must not be cut by the full-snapshot policy: no time-based full, no full for big deltas.
CHAIN_BACKUP = {"full_every": 366, "full_when_deltas_exceed": 100}  # the schema's maxima
UNSUPPORTED_CHAIN_MAX = 2  # without incremental snapshots each "incremental" is a full one: keep it small
TARGETS = {"second_vs_restic": 2.0, "growth_vs_restic": 1.0, "chain_restore": 1.2, "rss_mb": 150.0}
TOOLS = ("migrator", "restic", "tar-g1")


def migrator_has_incremental() -> bool:
    """The plan schema knows backup.full_every once incremental snapshots exist (it rejects unknown fields)."""
    try:
        schema = json.loads((REPO / "migrator" / "schemas" / "plan.schema.json").read_text())
        backup = schema["properties"]["backup"]
        if "$ref" in backup:  # "#/$defs/backup"
            backup = schema["$defs"][backup["$ref"].rsplit("/", 1)[-1]]
        return "full_every" in backup["properties"]
    except (OSError, ValueError, KeyError):
        return False


@dataclass
class Helpers:
    """The harness helpers the stage uses (bench.common's)."""
    log: Callable[[str], None]
    warm: Callable[[Path], None]
    loadavg: Callable[[], float]
    rotate: Callable[[list, int], list]
    racy_wait_s: float


class Changer:
    """Seeded change steps on one live tree; every step writes ~CHANGE_SHARE of the data set's bytes."""

    def __init__(self, root: Path, p: dataset.Params, data_bytes: int):
        self.root = root
        self.p = p
        self.budget = int(data_bytes * CHANGE_SHARE)
        self.templates = dataset._templates(p)
        self.dirs = sorted({rel.rsplit("/", 1)[0] for rel in dataset.small_file_paths(p)})
        self._corpus: bytes | None = None

    @property
    def corpus(self) -> bytes:
        if self._corpus is None:
            self._corpus = dataset._corpus(self.p)
        return self._corpus

    def _records(self, rng: random.Random, n: int) -> bytes:
        rand = rng.randbytes(n * dataset.RECORD_RANDOM)
        sel = rng.randbytes(n)
        r = dataset.RECORD_RANDOM
        return b"".join(self.templates[sel[k]] + rand[k * r:(k + 1) * r] for k in range(n))

    def step(self, name: str) -> dict:
        _ = self.corpus  # built once, outside the step's own time
        started = time.monotonic()
        rng = random.Random(f"{self.p.seed}:incremental:{name}")
        db_budget = int(self.budget * DB_SHARE)
        blob_bytes = int(self.budget * BLOB_SHARE)
        small_budget = self.budget - db_budget - blob_bytes
        # 1. in place: runs of 4 KiB pages at page-aligned offsets in the database files
        fds = [os.open(self.root / rel, os.O_WRONLY) for rel in dataset.db_file_paths()]
        db_written = runs = 0
        try:
            sizes = [os.fstat(fd).st_size for fd in fds]
            while db_written < db_budget:
                i = rng.randrange(len(fds))
                pages = rng.randint(PAGES_MIN, PAGES_MAX)
                off = rng.randrange(0, (sizes[i] - pages * PAGE) // PAGE + 1) * PAGE
                data = self._records(rng, pages * PAGE // dataset.RECORD)
                os.pwrite(fds[i], data, off)
                db_written += len(data)
                runs += 1
        finally:
            for fd in fds:
                os.close(fd)
        # 2. one new blob
        (self.root / "blobs" / f"new-{name}.bin").write_bytes(rng.randbytes(blob_bytes))
        # 3. new small files in existing directories
        small_written = files = 0
        while small_written < small_budget:
            size = rng.randint(dataset.SMALL_MIN, dataset.SMALL_MAX)
            off = rng.randrange(0, len(self.corpus) - size)
            header = f"# new file {name}/{files} size {size}\n".encode()
            (self.root / rng.choice(self.dirs) / f"n-{name}-{files:04d}.txt").write_bytes(
                header + self.corpus[off:off + size - len(header)])
            small_written += size
            files += 1
        return {"name": name, "bytes": db_written + blob_bytes + small_written, "db_bytes": db_written,
                "db_runs": runs, "blob_bytes": blob_bytes, "small_bytes": small_written, "small_files": files,
                "step_s": round(time.monotonic() - started, 3)}


def rmtree(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)


class Stage:
    def __init__(self, bench, h: Helpers):
        self.b = bench
        self.h = h
        self.chain_len = bench.args.chain
        self.dir = bench.work / "inc"
        self.live_root = self.dir / "live"  # data root of the plan: <live_root>/vol/data
        self.live = self.live_root / "vol" / "data"
        self.supported = migrator_has_incremental()
        self.rows: list[dict] = bench.raw["incremental"]
        self.changer: Changer | None = None
        self.restic_env = dict(os.environ, RESTIC_PASSWORD="bench", RESTIC_CACHE_DIR=str(self.dir / "restic-cache"))

    # -- set-up --------------------------------------------------------------------------------------------

    def _prepare(self) -> None:
        rmtree(self.dir)
        (self.live_root / "vol").mkdir(parents=True)
        started = time.monotonic()
        subprocess.run(["cp", "-a", str(self.b.ds1), str(self.live)], check=True)
        sync()
        self.h.log(f"incremental: copied the data set to {self.live} in {time.monotonic() - started:.1f} s")
        plan = flat_plan(self.b.vsn.socket_url, self.live_root)
        if self.supported:
            plan["backup"] = dict(CHAIN_BACKUP)
        else:
            self.h.log("incremental: migrator has no incremental snapshots yet (plan schema without "
                       "backup.full_every): its backups are full ones, its chain is cut to "
                       f"{UNSUPPORTED_CHAIN_MAX}")
            self.chain_len = min(self.chain_len, UNSUPPORTED_CHAIN_MAX)
        self.b.vsn.deploy("bench-incremental", plan)
        self.changer = Changer(self.live, self.b.p1, self.b.info1["bytes"])
        _ = self.changer.corpus
        time.sleep(self.h.racy_wait_s)  # the copy's files must not all look changed to the first scan

    def _change(self, name: str) -> dict:
        change = self.changer.step(name)
        time.sleep(self.h.racy_wait_s)
        return change

    # -- the tools -----------------------------------------------------------------------------------------

    def _mig_backup(self, store: Path) -> dict:
        before = du_bytes(str(store)) if store.exists() else 0
        sync()
        res, out = self.b.vsn.migrator_json("backup", "--to", f"file://{store}")
        return {"wall_s": res.wall_s, "cpu_s": res.cpu_s, "rss_mb": res.maxrss_mb,
                "growth": du_bytes(str(store)) - before, "size": out["size"], "uncompressed": out["uncompressed"],
                "internal_s": out["duration"], "id": out["snapshot_id"], "kind": out.get("kind"),
                "parent": out.get("parent"), "full_reasons": out.get("full_reasons")}

    def _restic(self, *args: str):
        return run(["restic", "-r", str(self.dir / "restic-repo"), *args], env=self.restic_env)

    def _restic_backup(self) -> dict:
        repo = self.dir / "restic-repo"
        before = du_bytes(str(repo))
        sync()
        res = self._restic("backup", "-q", "--json", str(self.live))
        summary = json.loads(res.stdout.strip().splitlines()[-1])
        return {"wall_s": res.wall_s, "cpu_s": res.cpu_s, "rss_mb": res.maxrss_mb,
                "growth": du_bytes(str(repo)) - before, "size": du_bytes(str(repo)) - before,
                "id": summary.get("snapshot_id"), "files_new": summary.get("files_new"),
                "files_changed": summary.get("files_changed"), "files_unmodified": summary.get("files_unmodified"),
                "data_added": summary.get("data_added")}

    def _tar_backup(self, level: int) -> dict:
        """GNU tar's listed-incremental: level 0 with a fresh snapshot file, level 1 on a copy of level 0's."""
        snar0, snar = self.dir / "tar.snar0", self.dir / f"tar.snar{level}"
        dest = self.dir / f"tar-level{level}.tar.zst"
        if level == 0:
            snar0.unlink(missing_ok=True)
        else:
            shutil.copyfile(snar0, snar)
        dest.unlink(missing_ok=True)
        sync()
        res = shell(f"tar -c --listed-incremental='{snar}' -C '{self.live}' . | zstd -q -T0 -{ZSTD_LEVEL} > '{dest}'")
        fs = run(["sync", str(dest)])
        return {"wall_s": res.wall_s, "cpu_s": res.cpu_s, "rss_mb": res.maxrss_mb, "size": dest.stat().st_size,
                "growth": dest.stat().st_size, "fsync_s": fs.wall_s}

    # -- part 1: the second backup -------------------------------------------------------------------------

    def _second_once(self, i: int) -> dict:
        store = self.dir / "store-second"
        rmtree(store)
        rmtree(self.dir / "restic-repo")
        rmtree(self.dir / "restic-cache")
        self._restic("init", "--repository-version", "2")
        row: dict = {"part": "second", "loadavg": self.h.loadavg(), "base": {}}
        self.h.warm(self.live)
        row["base"]["migrator"] = self._mig_backup(store)
        row["base"]["restic"] = self._restic_backup()
        row["base"]["tar-g1"] = self._tar_backup(0)
        row["change"] = self._change(f"second-{i}")
        tools = {"migrator": lambda: self._mig_backup(store), "restic": self._restic_backup,
                 "tar-g1": lambda: self._tar_backup(1)}
        for name in self.h.rotate(list(tools), i):
            self.h.warm(self.live)
            row[name] = r = tools[name]()
            self.h.log(f"incremental run {i + 1}: 2nd backup {name} {r['wall_s']:.2f} s (cpu {r['cpu_s']:.2f} s), "
                       f"store +{r['growth'] / MIB:.1f} MiB, rss {r['rss_mb']:.0f} MB"
                       + (f", kind {r['kind']}" if name == "migrator" else "")
                       + (f", files changed/new/unmodified {r['files_changed']}/{r['files_new']}/"
                          f"{r['files_unmodified']}" if name == "restic" else ""))
        return row

    def part_second(self) -> None:
        for i in range(self.b.args.runs):
            self.rows.append(self._second_once(i))
        rmtree(self.dir / "store-second")
        rmtree(self.dir / "restic-repo")
        rmtree(self.dir / "restic-cache")
        for f in self.dir.glob("tar*"):
            f.unlink()

    # -- part 2: restore at the end of a chain -------------------------------------------------------------

    def _mig_restore(self, store: Path, snapshot: str, dest: Path) -> dict:
        rmtree(dest)
        sync()
        res, out = self.b.vsn.migrator_json("restore", snapshot, "--from", f"file://{store}", "--into", str(dest))
        return {"wall_s": res.wall_s, "cpu_s": res.cpu_s, "rss_mb": res.maxrss_mb, "files": out.get("files"),
                "internal_s": out.get("duration"), "id": out.get("snapshot_id"), "kind": out.get("kind"),
                "bytes": out.get("bytes"), "links": len((out.get("chain") or {}).get("vol") or []) or None}

    def part_chain(self) -> None:
        chain, full = self.dir / "store-chain", self.dir / "store-full"
        build: dict = {"part": "chain_build", "loadavg": self.h.loadavg(), "chain": self.chain_len, "steps": []}
        started = time.monotonic()
        self.h.warm(self.live)
        base = self._mig_backup(chain)
        build["base"] = base
        for day in range(self.chain_len):
            change = self._change(f"day-{day + 1:03d}")
            r = self._mig_backup(chain)
            build["steps"].append({**r, "change": change})
            self.h.log(f"incremental chain day {day + 1}/{self.chain_len}: changed {change['bytes'] / MIB:.1f} MiB, "
                       f"backup {r['kind']} {r['wall_s']:.2f} s, +{r['growth'] / MIB:.1f} MiB")
        head = build["steps"][-1]["id"] if build["steps"] else base["id"]
        build["full"] = self._mig_backup(full)
        build["kinds"] = dict(Counter(str(s["kind"]) for s in build["steps"]))
        build["chain_store_bytes"] = du_bytes(str(chain))
        build["full_store_bytes"] = du_bytes(str(full))
        build["build_s"] = round(time.monotonic() - started, 1)
        self.rows.append(build)
        self.h.log(f"incremental chain built in {build['build_s']} s: kinds {build['kinds']}, chain store "
                   f"{build['chain_store_bytes'] / MIB:.0f} MiB, full store {build['full_store_bytes'] / MIB:.0f} MiB")
        dc, df = self.dir / "restore-chain", self.dir / "restore-full"
        tools = {"chain": lambda: self._mig_restore(chain, head, dc),
                 "full": lambda: self._mig_restore(full, build["full"]["id"], df)}
        dests = {"chain": dc, "full": df}
        for i in range(self.b.args.runs):
            row: dict = {"part": "chain_restore", "loadavg": self.h.loadavg()}
            same = {}
            for name in self.h.rotate(list(tools), i):
                for store in (chain, full):  # both stores' objects from the page cache
                    shell(f"tar -c -C '{store}' . | cat > /dev/null")
                row[name] = r = tools[name]()
                self.h.log(f"incremental restore run {i + 1}: {name} {r['wall_s']:.2f} s (cpu {r['cpu_s']:.2f} s), "
                           f"rss {r['rss_mb']:.0f} MB")
                if i == 0:
                    same[name] = same_tree(self.live, dests[name] / "vol" / "data", metadata=True)
                rmtree(dests[name])
                sync()
            if i == 0:
                row["identical"] = same
                self.h.log(f"restored trees identical to the live tree: {same}")
            self.rows.append(row)
        rmtree(chain)
        rmtree(full)

    def run(self) -> None:
        if not self.b.peers["restic"]:
            raise SystemExit("the incremental stage needs restic: apt-get install -y restic")
        self._prepare()
        try:
            self.part_second()
            self.part_chain()
        finally:
            self.b.vsn.teardown()
            rmtree(self.dir)


# -- summary -------------------------------------------------------------------------------------------------

def summarize_rows(rows: list[dict], add, data_mib: float) -> None:
    """Adds the stage's rows to run.py's table through its `add(metric, mig, peer, ratio, target, ok)`."""
    second = [r for r in rows if r["part"] == "second"]
    build = next((r for r in rows if r["part"] == "chain_build"), None)
    restores = [r for r in rows if r["part"] == "chain_restore"]

    def s(v):
        return "-" if v is None else f"{v:.2f} s"

    def mib(v):
        return f"{v / MIB:.1f} MiB"

    if second:
        change = median([r["change"]["bytes"] for r in second])
        m = median([r["migrator"]["wall_s"] for r in second])
        p = median([r["restic"]["wall_s"] for r in second])
        ratio = median([r["restic"]["wall_s"] / r["migrator"]["wall_s"] for r in second])
        kinds = ",".join(sorted({str(r["migrator"]["kind"]) for r in second}))
        add(f"incremental: 2nd backup after {change / MIB:.1f} MiB changed ({100 * change / MIB / data_mib:.1f} %), "
            f"migrator ({kinds}) vs restic with parent, ratio = restic/migrator",
            s(m), s(p), ratio, f">= {TARGETS['second_vs_restic']}", ratio >= TARGETS["second_vs_restic"])
        mg = median([r["migrator"]["growth"] for r in second])
        pg = median([r["restic"]["growth"] for r in second])
        gratio = median([r["migrator"]["growth"] / r["restic"]["growth"] for r in second])
        add("  store growth of the 2nd backup (du -sb), ratio = migrator/restic", mib(mg), mib(pg), gratio,
            f"<= {TARGETS['growth_vs_restic']}", gratio <= TARGETS["growth_vs_restic"])
        add("  migrator's own 'size' of the 2nd snapshot / restic's data_added (info)",
            mib(median([r["migrator"]["size"] for r in second])),
            mib(median([r["restic"]["data_added"] or 0 for r in second])), None, "info", None)
        t = median([r["tar-g1"]["wall_s"] for r in second])
        add("  vs tar --listed-incremental level 1 | zstd -T0 -3, ratio = tar/migrator (info)", s(m), s(t),
            median([r["tar-g1"]["wall_s"] / r["migrator"]["wall_s"] for r in second]), "info", None)
        add("  size vs tar level 1, ratio = tar/migrator growth (info)", mib(mg),
            mib(median([r["tar-g1"]["size"] for r in second])),
            median([r["tar-g1"]["size"] / r["migrator"]["growth"] for r in second]), "info", None)
        add("  CPU seconds, migrator / restic / tar level 1 (info)",
            s(median([r["migrator"]["cpu_s"] for r in second])),
            f"{s(median([r['restic']['cpu_s'] for r in second]))} / {s(median([r['tar-g1']['cpu_s'] for r in second]))}",
            None, "info", None)
        add("  base (untimed): migrator full / restic first backup (info)",
            s(median([r["base"]["migrator"]["wall_s"] for r in second])),
            s(median([r["base"]["restic"]["wall_s"] for r in second])), None, "info", None)
    if build and restores:
        n = build["chain"]
        m = median([r["chain"]["wall_s"] for r in restores])
        f = median([r["full"]["wall_s"] for r in restores])
        ratio = median([r["chain"]["wall_s"] / r["full"]["wall_s"] for r in restores])
        add(f"incremental: restore at the end of a chain of {n} (kinds {build['kinds']}) vs restore of a full, "
            "ratio = chain/full", s(m), s(f), ratio, f"<= {TARGETS['chain_restore']}", ratio <= TARGETS["chain_restore"])
        rss = median([r["chain"]["rss_mb"] for r in restores])
        add("  peak RSS of the chain restore (full restore in peer column)", f"{rss:.0f} MB",
            f"{median([r['full']['rss_mb'] for r in restores]):.0f} MB", None, f"<= {TARGETS['rss_mb']:.0f} MB",
            rss <= TARGETS["rss_mb"])
        same = restores[0].get("identical", {})
        ok = bool(same) and all(same.values())
        add("  restored = live tree (contents, modes, owners, ns mtimes)", str(same.get("chain")),
            str(same.get("full")), None, "True", ok)
        add("  CPU seconds, chain / full restore (info)", s(median([r["chain"]["cpu_s"] for r in restores])),
            s(median([r["full"]["cpu_s"] for r in restores])), None, "info", None)
        add("  migrator's own 'duration', chain / full restore (info)",
            s(median([r["chain"]["internal_s"] for r in restores])),
            s(median([r["full"]["internal_s"] for r in restores])),
            median([r["chain"]["internal_s"] / r["full"]["internal_s"] for r in restores
                    if r["chain"]["internal_s"] and r["full"]["internal_s"]]), "info", None)
        last = restores[-1]
        if last["chain"].get("bytes") is not None:
            add(f"  restore JSON 'bytes' (chain: {last['chain'].get('links')} links) (info)",
                mib(last["chain"]["bytes"]), mib(last["full"]["bytes"] or 0), None, "info", None)
        steps = build["steps"]
        if steps:
            add(f"  chain: per daily backup, median time / store growth (info; {build['build_s']:.0f} s to build)",
                s(median([x["wall_s"] for x in steps])), mib(median([x["growth"] for x in steps])), None, "info", None)
        add("  chain store (full + increments) vs full store (info)", mib(build["chain_store_bytes"]),
            mib(build["full_store_bytes"]), build["chain_store_bytes"] / build["full_store_bytes"], "info", None)


def run_stage(b) -> None:
    Stage(b, Helpers(log, warm, loadavg, rotate, RACY_WAIT_S)).run()


def summarize(b, add, data_mib: float) -> None:
    summarize_rows(b.raw["incremental"], add, data_mib)

"""The `restore` stage: `migrator restore --into` against `zstd -d | tar -x` (with migrator's flags, and
verifying a sha256 beside it) of the same data set; each restored tree checked against the data set."""

from __future__ import annotations

import subprocess
from pathlib import Path

from bench.backup import mig_backup, tar_backup
from bench.common import (
    TARGETS,
    flat_plan,
    fmt_s,
    log,
    per_run,
    quoted,
    rmtree,
    rotated_run,
    tar_extract_argv,
    warm,
)
from bench.measure import median, shell, sync


def ensure_snapshot(b) -> None:
    if not (b.store1.exists() and b.peer_file.exists()):
        b.vsn.deploy("bench-1x", flat_plan(b.vsn.socket_url, b.ds1_root))
        warm(b.ds1)
        mig_backup(b, b.store1)
        tar_backup(b, b.ds1, b.peer_file)


def mig_restore(b, store: Path, dest: Path) -> dict:
    rmtree(dest)
    sync()
    res, out = b.vsn.migrator_json("restore", "latest", "--from", f"file://{store}", "--into", str(dest))
    return {"wall_s": res.wall_s, "cpu_s": res.cpu_s, "rss_mb": res.maxrss_mb, "files": out.get("files"),
            "internal_s": out.get("duration")}


def tar_restore(b, src: Path, dest: Path, same_flags: bool = False, verify: bool = False) -> dict:
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


def same_tree(a: Path, b: Path, metadata: bool) -> bool:
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


def run_stage(b) -> None:
    ensure_snapshot(b)
    dm, dp = b.work / "restore-migrator", b.work / "restore-peer"
    df = b.work / "restore-flags"
    dv = b.work / "restore-verified"
    tools = {"migrator": lambda: mig_restore(b, b.store1, dm),
             "zstd|tar": lambda: tar_restore(b, b.peer_file, dp),
             "zstd|tar+sha256": lambda: tar_restore(b, b.peer_file, dv, verify=True)}
    if tar_extract_argv is not None:
        # migrator's own object, extracted by GNU tar with migrator's flags, minus migrator's
        # verify-and-re-emit layer (sha256, member checks, pax rewrite) in between
        obj = next(b.store1.rglob("vol.tar.zst"))
        tools["zstd|tar(migrator flags)"] = lambda: tar_restore(b, obj, df, same_flags=True)
    objects = [b.peer_file, *b.store1.rglob("vol.tar.zst")]
    dests = {"migrator": dm, "zstd|tar": dp, "zstd|tar(migrator flags)": df, "zstd|tar+sha256": dv}
    # The first run's check of each restored tree: migrator's held to metadata too, the peer's to contents.
    checks = {"migrator": lambda: same_tree(b.ds1, dm / "vol" / "data", metadata=True),
              "zstd|tar": lambda: same_tree(b.ds1, dp, metadata=False)}
    def warm_objects(name: str) -> None:
        for obj in objects:  # both objects read from the page cache, as the tree is for backup
            shell(f"cat '{obj}' > /dev/null")

    for i in range(b.args.runs):
        same = []

        def done(name: str, r: dict, i: int = i, same: list = same) -> None:
            log(f"restore run {i + 1}: {name} {r['wall_s']:.2f} s (cpu {r['cpu_s']:.2f} s), "
                f"rss {r['rss_mb']:.0f} MB")
            if i == 0 and name in checks:
                same.append(checks[name]())
            # Each extraction starts on the same (emptied) filesystem: with earlier trees still on it,
            # the same extraction took up to 3x as long (see README, "restore noise").
            rmtree(dests[name])
            sync()

        row = rotated_run(i, tools, warm_objects, done)
        if i == 0:
            row["identical"] = all(same) and len(same) == len(checks)
            log(f"restored trees identical to the data set: {row['identical']}")
        b.raw["restore"].append(row)


def summarize(b, add, data_mib: float) -> None:
    runs = b.raw["restore"]
    m = median([r["migrator"]["wall_s"] for r in runs])
    t = median([r["zstd|tar"]["wall_s"] for r in runs])
    ratio = per_run(runs, lambda r: r["zstd|tar"]["wall_s"] / r["migrator"]["wall_s"])
    add("restore time vs zstd -d|tar -x", fmt_s(m, data_mib), fmt_s(t, data_mib), ratio,
        f">= {TARGETS['restore']}", ratio >= TARGETS["restore"])
    if "zstd|tar(migrator flags)" in runs[0]:
        k = "zstd|tar(migrator flags)"
        tm = median([r[k]["wall_s"] for r in runs])
        add("  same, migrator's object + migrator's tar -x flags (info)", fmt_s(m), fmt_s(tm),
            per_run(runs, lambda r: r[k]["wall_s"] / r["migrator"]["wall_s"]), "info", None)
    if "zstd|tar+sha256" in runs[0]:
        k = "zstd|tar+sha256"
        tv = median([r[k]["wall_s"] for r in runs])
        add("  same, the peer verifying too: openssl sha256 of its object beside it (info)", fmt_s(m), fmt_s(tv),
            per_run(runs, lambda r: r[k]["wall_s"] / r["migrator"]["wall_s"]), "info", None)
        add("  the peer's own cost of verifying: zstd|tar / zstd|tar+sha256 (info)", "", fmt_s(tv),
            per_run(runs, lambda r: r["zstd|tar"]["wall_s"] / r[k]["wall_s"]), "info", None)
    mi = median([r["migrator"]["internal_s"] for r in runs])
    add("  migrator's own 'duration' (no CLI start-up) (info)", fmt_s(mi), fmt_s(t),
        per_run(runs, lambda r: r["zstd|tar"]["wall_s"] / r["migrator"]["internal_s"]), "info", None)
    mc = median([r["migrator"]["cpu_s"] for r in runs])
    tc = median([r["zstd|tar"]["cpu_s"] for r in runs])
    add("  CPU seconds (user+sys), ratio = peer/migrator (info)", f"{mc:.2f} s", f"{tc:.2f} s",
        per_run(runs, lambda r: r["zstd|tar"]["cpu_s"] / r["migrator"]["cpu_s"]), "info", None)
    ident = runs[0].get("identical")
    add("  restored = data set (contents; migrator also modes, owners, ns mtimes)", str(ident), str(ident), None,
        "True", bool(ident))

"""The `backup` stage: `migrator backup` against `tar -c | zstd` (and migrator's own tar flags, restic,
borg when installed) on the 1x data set; also the helpers restore and rss use to take a snapshot."""

from __future__ import annotations

import os
from pathlib import Path

from bench.common import (
    MIB,
    TARGETS,
    ZSTD_LEVEL,
    flat_plan,
    fmt_s,
    log,
    per_run,
    quoted,
    rmtree,
    rotated_run,
    tar_create_argv,
    warm,
)
from bench.measure import du_bytes, median, run, shell, sync


def mig_backup(b, store: Path) -> dict:
    rmtree(store)
    sync()
    res, out = b.vsn.migrator_json("backup", "--to", f"file://{store}")
    return {"wall_s": res.wall_s, "cpu_s": res.cpu_s, "rss_mb": res.maxrss_mb, "size": out["size"],
            "uncompressed": out["uncompressed"], "internal_s": out["duration"]}


def tar_backup(b, tree: Path, dest: Path, same_flags: bool = False) -> dict:
    dest.unlink(missing_ok=True)
    sync()
    # same_flags: GNU tar with migrator's exact argv (pax format, xattrs, ACLs, sparse) on the volume dir
    tar = quoted(tar_create_argv(tree.parent, False)) if same_flags else f"tar -c -C '{tree}' ."
    res = shell(f"{tar} | zstd -q -T0 -{ZSTD_LEVEL} > '{dest}'")
    fs = run(["sync", str(dest)])  # what migrator's file store does on commit (fsync), timed apart
    return {"wall_s": res.wall_s, "cpu_s": res.cpu_s, "rss_mb": res.maxrss_mb, "size": dest.stat().st_size,
            "fsync_s": fs.wall_s}


def restic_backup(b, tree: Path) -> dict:
    repo, cache = b.work / "restic-repo", b.work / "restic-cache"
    rmtree(repo)
    rmtree(cache)
    env = dict(os.environ, RESTIC_PASSWORD="bench", RESTIC_CACHE_DIR=str(cache))
    run(["restic", "-r", str(repo), "init", "--repository-version", "2"], env=env)
    sync()
    res = run(["restic", "-r", str(repo), "backup", "-q", str(tree)], env=env)
    return {"wall_s": res.wall_s, "cpu_s": res.cpu_s, "rss_mb": res.maxrss_mb, "size": du_bytes(str(repo))}


def borg_backup(b, tree: Path) -> dict:
    repo, home = b.work / "borg-repo", b.work / "borg-base"
    rmtree(repo)
    rmtree(home)
    env = dict(os.environ, BORG_BASE_DIR=str(home), BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes",
               BORG_RELOCATED_REPO_ACCESS_IS_OK="yes", BORG_PASSPHRASE="")
    run(["borg", "init", "-e", "none", str(repo)], env=env)
    sync()
    res = run(["borg", "create", "--compression", f"zstd,{ZSTD_LEVEL}", f"{repo}::bench", "."], env=env,
              cwd=str(tree))
    return {"wall_s": res.wall_s, "cpu_s": res.cpu_s, "rss_mb": res.maxrss_mb, "size": du_bytes(str(repo))}


def run_stage(b) -> None:
    b.vsn.deploy("bench-1x", flat_plan(b.vsn.socket_url, b.ds1_root))
    warm(b.ds1)
    tools = {"migrator": lambda: mig_backup(b, b.store1),
             "tar|zstd": lambda: tar_backup(b, b.ds1, b.peer_file)}
    if tar_create_argv is not None:
        tools["tar(migrator flags)|zstd"] = lambda: tar_backup(b, b.ds1, b.work / "peer-flags.tar.zst",
                                                                     same_flags=True)
    if b.peers["restic"]:
        tools["restic"] = lambda: restic_backup(b, b.ds1)
    if b.peers["borg"]:
        tools["borg"] = lambda: borg_backup(b, b.ds1)
    for i in range(b.args.runs):
        def done(name: str, r: dict, i: int = i) -> None:
            log(f"backup run {i + 1}: {name} {r['wall_s']:.2f} s (cpu {r['cpu_s']:.2f} s), "
                f"{r['size'] / MIB:.0f} MiB, rss {r['rss_mb']:.0f} MB")

        # Re-warmed before every command: restic and borg write ~0.6 GiB each, and on this VM the
        # command after them read part of the tree from disk again (1.5-2 s slower, whoever it was).
        b.raw["backup"].append(rotated_run(i, tools, lambda name: warm(b.ds1), done))
    (b.work / "peer-flags.tar.zst").unlink(missing_ok=True)
    rmtree(b.work / "restic-repo")
    rmtree(b.work / "borg-repo")
    rmtree(b.work / "restic-cache")
    rmtree(b.work / "borg-base")


def summarize(b, add, data_mib: float) -> None:
    runs = b.raw["backup"]
    m = median([r["migrator"]["wall_s"] for r in runs])
    mc = median([r["migrator"]["cpu_s"] for r in runs])
    t = median([r["tar|zstd"]["wall_s"] for r in runs])
    ratio = per_run(runs, lambda r: r["tar|zstd"]["wall_s"] / r["migrator"]["wall_s"])
    add("backup time vs tar|zstd -T0 -3", fmt_s(m, data_mib), fmt_s(t, data_mib), ratio,
        f">= {TARGETS['backup']}", ratio >= TARGETS["backup"])
    tf = median([r["tar|zstd"]["wall_s"] + r["tar|zstd"]["fsync_s"] for r in runs])
    add("  same, peer + fsync of its output (info)", fmt_s(m), fmt_s(tf),
        per_run(runs, lambda r: (r["tar|zstd"]["wall_s"] + r["tar|zstd"]["fsync_s"]) / r["migrator"]["wall_s"]),
        "info", None)
    if "tar(migrator flags)|zstd" in runs[0]:
        k = "tar(migrator flags)|zstd"
        tm = median([r[k]["wall_s"] + r[k]["fsync_s"] for r in runs])
        add("  same, peer with migrator's tar flags + fsync (info)", fmt_s(m), fmt_s(tm),
            per_run(runs, lambda r: (r[k]["wall_s"] + r[k]["fsync_s"]) / r["migrator"]["wall_s"]), "info", None)
    mi = median([r["migrator"]["internal_s"] for r in runs])
    add("  migrator's own 'duration' (no CLI start-up) vs peer + fsync (info)", fmt_s(mi), fmt_s(tf),
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
            add(f"backup time vs {peer} (repo {ps:.0f} MiB) (info)", fmt_s(m, data_mib), fmt_s(p, data_mib),
                per_run(runs, lambda r, peer=peer: r[peer]["wall_s"] / r["migrator"]["wall_s"]), "info", None)
        else:
            add(f"backup time vs {peer} (info)", fmt_s(m), "not installed", None, "info", None)

"""The `rss` stage: peak RSS of `migrator backup` and `restore` at 1x and RSS_SCALE x the data set (flat
memory: the ratio 3x/1x)."""

from __future__ import annotations

from bench.backup import mig_backup
from bench.common import RSS_SCALE, TARGETS, flat_plan, loadavg, log, rmtree, warm
from bench.measure import median
from bench.restore import ensure_snapshot, mig_restore


def run_stage(b) -> None:
    store3, dest3 = b.work / "store-3x", b.work / "restore-3x"
    need_1x = not b.raw["backup"] or not b.raw["restore"]
    for i in range(b.args.runs):
        row = {"loadavg": loadavg()}
        if need_1x:
            ensure_snapshot(b)
            if b.vsn.deployed != "bench-1x":
                b.vsn.deploy("bench-1x", flat_plan(b.vsn.socket_url, b.ds1_root))
            if i == 0:
                warm(b.ds1)
            row["backup_1x"] = mig_backup(b, b.store1)
            row["restore_1x"] = mig_restore(b, b.store1, b.work / "restore-1x")
            rmtree(b.work / "restore-1x")
        b.vsn.deploy("bench-3x", flat_plan(b.vsn.socket_url, b.ds3_root))
        if i == 0:
            warm(b.ds3)
        row["backup_3x"] = mig_backup(b, store3)
        row["restore_3x"] = mig_restore(b, store3, dest3)
        rmtree(dest3)
        log(f"rss run {i + 1}: backup 3x {row['backup_3x']['rss_mb']:.0f} MB "
            f"({row['backup_3x']['wall_s']:.1f} s), restore 3x {row['restore_3x']['rss_mb']:.0f} MB "
            f"({row['restore_3x']['wall_s']:.1f} s)")
        b.raw["rss"].append(row)
    rmtree(store3)


def summarize(b, add, data_mib: float) -> None:
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

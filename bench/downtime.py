"""The `downtime` stage: a writer service's downtime during `migrator backup`, two-phase against stop,
with a load changing LOAD_SHARE of the data set while phase 1 runs (and two-phase without load: the floor)."""

from __future__ import annotations

import json
import subprocess
import time

from bench import dataset
from bench.common import (
    DOWNTIME_STEPS,
    LOAD_SHARE,
    MIB,
    MIGRATOR,
    RACY_WAIT_S,
    TARGETS,
    flat_plan,
    fmt_s,
    loadavg,
    log,
    rmtree,
    rotate,
    writer_service,
)
from bench.load import Load
from bench.measure import median, run_stamped, sync
from tests.lab.vsn import free_port


def _phases(lines: list[tuple[float, str]], downtime: float | None) -> dict:
    """Split a service's downtime with migrator's step lines ("stopping w", "starting w"): the stopped
    window (stop + whatever migrator does with the writer down: re-scan, diff and phase-2 archive, or the
    whole archive in stop mode) and the restart (start + health probe until healthy)."""
    t_stop = next((t for t, line in lines if line.endswith("stopping w")), None)
    t_start = next((t for t, line in lines if line.endswith("starting w")), None)
    if t_stop is None or t_start is None or downtime is None:
        return {}
    return {"stopped_window_s": round(t_start - t_stop, 3), "start_probe_s": round(downtime - (t_start - t_stop), 3)}


def phase1_estimate(b) -> float:
    walls = [r["migrator"]["wall_s"] for r in b.raw["backup"]]
    whole = median(walls) if walls else b.info1["bytes"] / (120 * MIB)
    return max(2.0, 0.7 * whole)


def downtime_once(b, variant: str, port: int) -> dict:
    """One backup of a fresh copy of the 1x set with the writer deployed. variant: "two-phase" or "stop"
    (with the 1% load), or "two-phase-idle" (no load: the floor of a two-phase stop, start and probe)."""
    mode = variant.removesuffix("-idle")
    root = b.work / "dt"
    b.vsn.teardown()
    rmtree(root)
    (root / "vol").mkdir(parents=True)
    subprocess.run(["cp", "-a", str(b.ds1), str(root / "vol" / "data")], check=True)
    sync()
    b.vsn.deploy(f"downtime-{mode}", flat_plan(b.vsn.socket_url, root, writer_service(port, mode)))
    # Files copied in the last 2 s would count as changed (treestate's racy-entry rule): let them age.
    time.sleep(RACY_WAIT_S)
    store = b.work / "store-dt"
    rmtree(store)
    load = None
    if not variant.endswith("-idle"):
        load = Load(root / "vol" / "data", dataset.small_file_paths(b.p1), dataset.db_file_paths()[0],
                    int(b.info1["bytes"] * LOAD_SHARE), phase1_estimate(b), port)
        load.start()
    try:
        env = dict(b.vsn.env(), MIGRATOR_PROGRESS="1")  # step lines on stderr, time-stamped as they come
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


def run_stage(b) -> None:
    port = free_port()
    for i in range(b.args.runs):
        row = {"loadavg": loadavg()}
        for variant in rotate(["two-phase", "stop", "two-phase-idle"], i):
            row[variant] = r = downtime_once(b, variant, port)
            load = r["load"] or {"bytes_written": 0, "files_rewritten": 0, "stopped_by": "no load"}
            log(f"downtime run {i + 1}: {variant} downtime {r['downtime_s']} s (backup {r['wall_s']:.1f} s, "
                f"load {load['bytes_written'] / MIB:.1f} MiB / {load['files_rewritten']} files, "
                f"stopped by {load['stopped_by']}; phase 2: {r['phase2_files']} files, "
                f"{(r['phase2_uncompressed'] or 0) / MIB:.0f} MiB; phases {r['phases']})")
        b.raw["downtime"].append(row)
    b.vsn.teardown()
    rmtree(b.work / "dt")


def summarize(b, add, data_mib: float) -> None:
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
            f"{fmt_s(part(variant, 'stopped_window_s'))} + {fmt_s(part(variant, 'start_probe_s'))}",
            "", None, "info", None)
    for variant in ("two-phase", "two-phase-idle", "stop"):
        steps = [r[variant].get("downtime_steps") for r in runs]
        if all(steps):
            cells = " / ".join(f"{median([st[k] for st in steps]):.2f}" for k in DOWNTIME_STEPS)
            add(f"  {variant}: {' / '.join(DOWNTIME_STEPS)} (s, from backup --json) (info)", cells, "", None,
                "info", None)

"""Downtime of `migrator move` ÷ downtime of the naive way (stop, tar|zstd over ssh, deploy there), on the
same data set, with a writer changing ~1% of the data while migrator's pre-copy runs (issue 5, target
<= 0.2). Uses the test lab: a PodmanVSN as the source and `tests.lab.vsn2.start_target` as the target (its
own network + mount namespace, sshd, podman). A fresh source and target per measurement (their start/stop
is not measured). Run as root from the repository root with the lab images built:

    .venv/bin/python -m bench.move_bench [--size-gb 1] [--runs 3]

Prints the medians and the ratio, writes bench/out/move.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import statistics
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

from bench import dataset
from bench.load import Load
from tests.lab.plans import demo_plan, secrets_file, web_port
from tests.lab.vsn import LAB, REPO, PodmanVSN, lab_env, write_json
from tests.lab.vsn2 import start_target

BENCH = REPO / "bench"

CACHE = Path("/var/tmp/migrator-move-bench")
PRECOPY_S_PER_GB = 5.0  # from the pre-copy's start the load spreads its 1 % over about this long (it stops
# earlier when the web service stops answering, i.e. at the cut-over)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sh(cmd: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, **kw)


@contextlib.contextmanager
def source_vsn(ds_dir: Path):
    """A fresh VSN with the data set in webdata/www and the flat demo plan deployed."""
    vsn = PodmanVSN().start()
    try:
        www = vsn.data_root / "webdata" / "www"
        www.mkdir(parents=True, exist_ok=True)
        cp = sh(f"cp -a {shlex.quote(str(ds_dir))}/. {shlex.quote(str(www))}/")
        if cp.returncode:
            raise RuntimeError(f"copying the data set failed: {cp.stderr}")
        (www / "index.html").write_text("bench page")
        raw = demo_plan(vsn, host=False)
        plan = write_json(vsn.base / "plan.json", raw)
        secrets = secrets_file(vsn.base / "secrets.json")
        res = vsn.migrator("deploy", str(plan), "--secrets", str(secrets))
        if res.returncode:
            raise RuntimeError(f"source deploy exited {res.returncode}: {res.stderr[-2000:]}")
        os.sync()
        yield vsn, raw, plan, secrets
    finally:
        vsn.stop()


def _start_at_precopy(load: Load, vsn: PodmanVSN, started: float, timeout: float = 600) -> None:
    """Start the write load when the pre-copy starts: the first `agent receive` for this VSN's data root
    (the target's receiver, started over SSH) is running."""
    pattern = f"agent receive .*--data-root {vsn.data_root}"
    while time.monotonic() - started < timeout:
        if subprocess.run(["pgrep", "-f", pattern], capture_output=True).returncode == 0:
            load.started_after_s = round(time.monotonic() - started, 2)
            load.start()
            return
        time.sleep(0.05)


def measure_migrator(ds_dir: Path, p: dataset.Params, ds_bytes: int) -> dict:
    with source_vsn(ds_dir) as (vsn, raw, _plan, _secrets), start_target(vsn) as target:
        www = vsn.data_root / "webdata" / "www"
        load = Load(www, dataset.small_file_paths(p), dataset.db_file_paths()[0], budget_bytes=int(ds_bytes * 0.01),
                    spread_s=PRECOPY_S_PER_GB * p.scale, port=web_port(raw))
        os.sync()
        started = time.monotonic()
        gate = threading.Thread(target=_start_at_precopy, args=(load, vsn, started), daemon=True)
        gate.start()
        try:
            res = vsn.migrator("move", *target.move_args(), "--json", timeout=3600)
        finally:
            gate.join(5)
            load_stats = load.stop() if load.is_alive() or load.ident else {"error": "pre-copy never seen"}
        wall = time.monotonic() - started
        load_stats["started_after_s"] = getattr(load, "started_after_s", None)
        try:
            out = json.loads(res.stdout)
        except ValueError:
            out = {}
        if res.returncode != 0 or "downtime_s" not in out:
            raise RuntimeError(f"migrator move exited {res.returncode}: {res.stdout[-1500:]} {res.stderr[-1500:]}")
        keys = ("downtime_s", "bytes_precopy", "bytes_delta", "precopy_s", "downtime_steps", "before_downtime_steps", "target_steps", "health")
        return {"downtime_s": float(out["downtime_s"]), "wall_s": round(wall, 2), "load": load_stats,
                "move": {k: out[k] for k in keys if k in out}}


def measure_naive(ds_dir: Path) -> dict:
    with source_vsn(ds_dir) as (vsn, _raw, plan, secrets), start_target(vsn) as target:
        cfg, alias = str(target.host.ssh_config_file), target.host.alias
        remote_plan, remote_secrets = f"{target.path}/naive-plan.json", f"{target.path}/naive-secrets.json"
        for local, remote in ((plan, remote_plan), (secrets, remote_secrets)):  # not timed
            res = subprocess.run(["scp", "-q", "-F", cfg, "-p", str(local), f"{alias}:{remote}"],
                                 capture_output=True, text=True)
            if res.returncode:
                raise RuntimeError(f"scp failed: {res.stderr}")
        os.sync()
        t0 = time.monotonic()
        res = vsn.migrator("teardown")
        t_stopped = time.monotonic()
        if res.returncode:
            raise RuntimeError(f"source teardown exited {res.returncode}: {res.stderr[-1500:]}")
        remote_x = f"zstd -q -d | tar -x --numeric-owner -C {shlex.quote(target.path + '/data')}"
        pipe = (f"tar --numeric-owner -C {shlex.quote(str(vsn.data_root))} -cf - . | zstd -q -T0 -3 | "
                f"ssh -F {shlex.quote(cfg)} {alias} {shlex.quote(remote_x)}")
        res = sh(pipe)
        t_copied = time.monotonic()
        if res.returncode:
            raise RuntimeError(f"naive copy failed ({res.returncode}): {res.stderr[-1500:]}")
        deploy = f"{target.remote_migrator()} deploy {shlex.quote(remote_plan)} --secrets {shlex.quote(remote_secrets)}"
        res = subprocess.run(["ssh", "-F", cfg, alias, deploy], capture_output=True, text=True, timeout=1800)
        t_healthy = time.monotonic()
        if res.returncode:
            raise RuntimeError(f"target deploy exited {res.returncode}: {res.stderr[-1500:]} {res.stdout[-500:]}")
        states = target.containers()
        if states.get("web") != "running":
            raise RuntimeError(f"target containers after naive deploy: {states}")
        return {"downtime_s": round(t_healthy - t0, 3), "stop_s": round(t_stopped - t0, 3),
                "copy_s": round(t_copied - t_stopped, 3), "deploy_s": round(t_healthy - t_copied, 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-gb", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root (the lab's VSNs and SSH host need it)", file=sys.stderr)
        return 2
    os.chdir(REPO)
    log("lab images ...")
    subprocess.run([str(LAB / "build-images.sh")], check=True, env=lab_env(), capture_output=True, timeout=1800)
    p = dataset.Params(scale=args.size_gb)
    info = dataset.ensure(CACHE / f"ds-{args.size_gb:g}", p, log=log)
    ds_dir = CACHE / f"ds-{args.size_gb:g}" / "vol" / "data"

    runs = []
    for i in range(args.runs):
        run: dict = {"run": i + 1}
        order = ("migrator", "naive") if i % 2 == 0 else ("naive", "migrator")
        for side in order:
            log(f"run {i + 1}/{args.runs}: {side} ...")
            try:
                run[side] = measure_migrator(ds_dir, p, info["bytes"]) if side == "migrator" else measure_naive(ds_dir)
                log(f"run {i + 1}: {side} downtime {run[side]['downtime_s']:.2f} s")
            except Exception as exc:  # report and go on with the next measurement
                run[side] = {"error": f"{type(exc).__name__}: {exc}"}
                log(f"run {i + 1}: {side} FAILED: {exc}")
                traceback.print_exc()
        if "downtime_s" in run["migrator"] and "downtime_s" in run["naive"]:
            run["ratio"] = round(run["migrator"]["downtime_s"] / run["naive"]["downtime_s"], 3)
            log(f"run {i + 1}: ratio {run['ratio']:.3f}")
        runs.append(run)

    ok = [r for r in runs if "ratio" in r]
    summary: dict = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "size_gb": args.size_gb,
                     "dataset": info, "runs_requested": args.runs, "runs_ok": len(ok), "target_ratio": 0.2,
                     "load_avg": os.getloadavg(), "runs": runs}
    if ok:
        summary["migrator_downtime_s"] = round(statistics.median(r["migrator"]["downtime_s"] for r in ok), 3)
        summary["naive_downtime_s"] = round(statistics.median(r["naive"]["downtime_s"] for r in ok), 3)
        summary["ratio"] = round(statistics.median(r["ratio"] for r in ok), 3)
        summary["pass"] = summary["ratio"] <= 0.2
    out = BENCH / "out" / "move.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))
    print()
    if ok:
        print(f"move downtime, median of {len(ok)} run(s), {info['bytes'] / 2**20:.0f} MiB, ~1% changed during pre-copy:")
        print(f"  migrator move : {summary['migrator_downtime_s']:.2f} s")
        print(f"  naive         : {summary['naive_downtime_s']:.2f} s  (stop, tar|zstd|ssh, deploy there)")
        print(f"  ratio         : {summary['ratio']:.3f}  (target <= 0.2: {'PASS' if summary['pass'] else 'FAIL'})")
    else:
        print("no run completed both sides; see the errors above")
    print(f"wrote {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

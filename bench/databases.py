"""Real databases under a write load: a two-phase backup's downtime against stopping the database for the
whole archive (target <= 0.10x), where that downtime goes, and migrator's dump throughput against running
the same dump tool by hand into zstd (target >= 0.9x).

    .venv/bin/python -m bench.databases [--kinds mariadb,postgres] [--sizes-gb 1,3] [--runs 3]

Per kind and size: one lab VSN, the kind's lab image (tests/lab/databases.py) with its table data grown to
the size, the tests' load generator committing transactions throughout. Each run backs up twice with the
same data and load, once with quiesce "two-phase" and once with "stop" (order alternating), reading each
backup's own downtime figure and steps; then times a dump by hand (`exec mariadb-dump|pg_dump ... | zstd -3
-T0 -o FILE; sync FILE`) against the dump inside a backup to a file store on the same disk. Medians over --runs; results in
bench/out/databases.json. Nothing here asserts a time."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from pathlib import Path

from bench.common import OUT, log
from tests.lab.databases import DB_PASSWORD, Loader, db_plan, db_port, secrets_values
from tests.lab.plans import secrets_file
from tests.lab.vsn import LAB, PodmanVSN, lab_env, write_json

GIB = 1024 ** 3
TARGET_DOWNTIME = 0.10
TARGET_DUMP = 0.9
# SQL that adds some 40-150 MB of table data per statement: rows of 256 hex characters from 8 independent md5s
# (compress ~2x, like real rows; one md5 repeated would compress 16x and flatter every archive).
GROW = {
    "mariadb": ("CREATE TABLE IF NOT EXISTS filler (id BIGINT AUTO_INCREMENT PRIMARY KEY, pad TEXT NOT NULL) "
                "ENGINE=InnoDB",
                "INSERT INTO filler (pad) SELECT CONCAT(MD5(RAND()), MD5(RAND()), MD5(RAND()), MD5(RAND()), MD5(RAND()), MD5(RAND()), MD5(RAND()), MD5(RAND())) FROM seq_1_to_120000",
                "SELECT data_length + index_length FROM information_schema.tables WHERE table_schema='app' "
                "AND table_name='filler'"),
    "postgres": ("CREATE TABLE IF NOT EXISTS filler (id BIGSERIAL PRIMARY KEY, pad TEXT NOT NULL)",
                 "INSERT INTO filler (pad) SELECT md5(random()::text) || md5(random()::text) || md5(random()::text) || md5(random()::text) || md5(random()::text) || md5(random()::text) || md5(random()::text) || md5(random()::text) FROM generate_series(1, 120000)",
                 "SELECT pg_total_relation_size('filler')"),
}


def sql(vsn: PodmanVSN, kind: str, statement: str) -> str:
    if kind == "mariadb":
        argv = ["mariadb", "--user=root", "--batch", "--skip-column-names", "--database=app", f"--execute={statement}"]
    # PostgreSQL: as the application's role (trust on the socket), so the dump's user owns the table.
    else:
        argv = ["psql", "--host=/run/postgresql", "--username=app", "--dbname=app", "--tuples-only",
                "--no-align", f"--command={statement}"]
    return vsn.podman("exec", "db", *argv).stdout.strip()


def grow(vsn: PodmanVSN, kind: str, size: int) -> int:
    create, insert, measure = GROW[kind]
    sql(vsn, kind, create)
    have = int(sql(vsn, kind, measure) or 0)
    while have < size:
        sql(vsn, kind, insert)
        have = int(sql(vsn, kind, measure) or 0)
    if kind == "postgres":
        sql(vsn, kind, "VACUUM ANALYZE filler")
    return have


def deploy(vsn: PodmanVSN, tmp: Path, raw: dict) -> None:
    plan = write_json(tmp / f"plan-{raw['services'][0]['quiesce']}.json", raw)
    secrets = secrets_file(tmp / "secrets.json", secrets_values())
    vsn.migrator("teardown")  # keeps the data: the next plan deploys on it
    done = vsn.migrator("deploy", str(plan), "--secrets", str(secrets), timeout=900)
    if done.returncode != 0:
        raise SystemExit(f"deploy failed: {done.stderr[-2000:]}")


def backup(vsn: PodmanVSN, store: str) -> dict:
    done = vsn.migrator("backup", "--to", store, "--full", "--json", timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"backup failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout)


def dump_by_hand(vsn: PodmanVSN, kind: str, out: Path) -> float:
    """The same dump tool, user and options migrator runs, through zstd -3 into a file on the same disk as
    the store, synced (what an operator would script), in seconds."""
    from migrator.plan.model import Dump
    from migrator.stack.dumps import dump_command

    cmd = dump_command(Dump(kind=kind, databases=("app",), user="app", password_secret="x"), "app", DB_PASSWORD)
    env_args = [a for k, v in cmd.env.items() for a in ("--env", f"{k}={v}")]
    user = ["--user", cmd.user] if cmd.user else []
    argv = ["podman", "--url", vsn.socket_url, "exec", *env_args, *user, "db", *cmd.argv]
    started = time.monotonic()
    with subprocess.Popen(argv, stdout=subprocess.PIPE, env=vsn.podman_env()) as dump, \
            subprocess.Popen(["zstd", "-q", "-3", "-T0", "-f", "-o", str(out)], stdin=dump.stdout) as z:
        dump.stdout.close()
        z.wait()
        dump.wait()
    if dump.returncode != 0 or z.returncode != 0:
        raise SystemExit(f"dump by hand failed ({dump.returncode}, {z.returncode})")
    subprocess.run(["sync", str(out)], check=True)
    took = time.monotonic() - started
    out.unlink()
    return took


def one_size(kind: str, size_gb: float, runs: int, work: Path) -> dict:
    vsn = PodmanVSN().start()
    tmp = work / f"{kind}-{size_gb:g}"
    tmp.mkdir(parents=True, exist_ok=True)
    store = f"file://{tmp}/store"
    rows: list[dict] = []
    try:
        raw = db_plan(vsn, kind, name="bench")
        deploy(vsn, tmp, raw)
        started = time.monotonic()
        have = grow(vsn, kind, int(size_gb * GIB))
        log(f"{kind}: {have / GIB:.2f} GiB of table data in {time.monotonic() - started:.0f}s")
        modes = ["two-phase", "stop"]
        for run in range(runs):
            row: dict = {}
            for mode in modes if run % 2 == 0 else modes[::-1]:
                plan = db_plan(vsn, kind, name="bench", quiesce=mode)
                plan["services"][0]["ports"][0]["host"] = db_port(raw)
                deploy(vsn, tmp, plan)
                loader = Loader(kind, db_port(raw)).start(ready_rows=20, timeout=300)
                result = backup(vsn, store)
                loader.wait_for(lambda ld=loader: bool(ld.outages) and ld.outages[-1].ended is not None, 300,
                                "a reconnect")
                row[mode] = {"downtime_s": result["downtime"]["db"], "steps": result["downtime_steps"].get("db", {}),
                             "backup_s": result["duration"], "committed": loader.stop(),
                             "dump_s": result["dumps"][0]["seconds"], "dump_bytes": result["dumps"][0]["uncompressed"]}
                log(f"{kind} {size_gb:g} GiB {mode}: downtime {row[mode]['downtime_s']}s "
                    f"{row[mode]['steps']} (backup {row[mode]['backup_s']}s)")
                subprocess.run(["rm", "-rf", f"{tmp}/store"], check=True)
            row["dump_by_hand_s"] = dump_by_hand(vsn, kind, tmp / "by-hand.dump.zst")
            row["downtime_ratio"] = row["two-phase"]["downtime_s"] / row["stop"]["downtime_s"]
            migrator_dump = statistics.median([row["two-phase"]["dump_s"], row["stop"]["dump_s"]])
            row["dump_ratio"] = row["dump_by_hand_s"] / migrator_dump
            log(f"{kind} {size_gb:g} GiB run {run + 1}: downtime ratio {row['downtime_ratio']:.3f}, dump "
                f"{migrator_dump:.1f}s vs by hand {row['dump_by_hand_s']:.1f}s (ratio {row['dump_ratio']:.2f})")
            rows.append(row)
        vsn.migrator("teardown")
    finally:
        vsn.stop()
        subprocess.run(["rm", "-rf", str(tmp)], check=False)
    med = statistics.median
    return {"kind": kind, "size_gb": size_gb, "table_bytes": have, "runs": rows,
            "downtime_ratio": med(r["downtime_ratio"] for r in rows),
            "two_phase_downtime_s": med(r["two-phase"]["downtime_s"] for r in rows),
            "stop_downtime_s": med(r["stop"]["downtime_s"] for r in rows),
            "two_phase_steps": {k: med(r["two-phase"]["steps"].get(k, 0.0) for r in rows)
                                for k in rows[0]["two-phase"]["steps"]},
            "dump_ratio": med(r["dump_ratio"] for r in rows),
            "dump_mib_s": med(r["two-phase"]["dump_bytes"] / r["two-phase"]["dump_s"] / 2 ** 20 for r in rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", default="mariadb,postgres")
    parser.add_argument("--sizes-gb", default="1,3")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--work", default="/var/tmp/migrator-bench-db")
    args = parser.parse_args()
    subprocess.run([str(LAB / "build-images.sh"), "busybox", "mariadb", "postgres"], check=True,
                   capture_output=True, env=lab_env())
    results = []
    for kind in args.kinds.split(","):
        for size in (float(s) for s in args.sizes_gb.split(",")):
            results.append(one_size(kind, size, args.runs, Path(args.work)))
    OUT.mkdir(exist_ok=True)
    (OUT / "databases.json").write_text(json.dumps(results, indent=2))
    print(f"{'kind':9} {'size':>6} {'2-phase':>8} {'stop':>8} {'ratio':>6} {'target':>7}   {'dump':>9} "
          f"{'ratio':>6} {'target':>7}   two-phase downtime steps (s)")
    for r in results:
        steps = ", ".join(f"{k} {v:.2f}" for k, v in r["two_phase_steps"].items())
        print(f"{r['kind']:9} {r['size_gb']:>5g}G {r['two_phase_downtime_s']:>7.2f}s {r['stop_downtime_s']:>7.2f}s "
              f"{r['downtime_ratio']:>6.3f} {'<=' + str(TARGET_DOWNTIME):>7}   {r['dump_mib_s']:>5.0f}MiB/s "
              f"{r['dump_ratio']:>6.2f} {'>=' + str(TARGET_DUMP):>7}   {steps}")


if __name__ == "__main__":
    main()

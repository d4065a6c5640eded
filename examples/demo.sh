#!/usr/bin/env bash
# `make demo`: the main job on the built-in demo plan, end to end, on this machine's podman:
#   validate -> check -> deploy (Host container, MariaDB + a web service) -> a client commits rows to MariaDB
#   throughout -> backup (with a dump of the database) -> change a page -> incremental backup -> teardown +
#   wipe the data dirs -> restore latest -> verify: pages byte-identical, every committed row up to the
#   backup's stop intact -> the dump loads into a scratch database.
# Set KEEP=1 to leave the demo stack running afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
MIGRATOR=${MIGRATOR:-.venv/bin/migrator}
PLAN=examples/demo-plan.json
SOCK=/run/podman/podman.sock
DATA=/srv/migrator-demo
STORE=/var/backups/migrator-demo
export MIGRATOR_PROGRESS=1
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/lab/containers.conf}
export CONTAINERS_STORAGE_CONF=${CONTAINERS_STORAGE_CONF:-$PWD/lab/storage.conf}

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

# The secrets file must be 0600 and owned by us; git does not keep modes, so install a private copy where
# an operator would keep it (deploy remembers its path for later commands).
SECRETS=/etc/migrator/demo-secrets.json
install -d -m 700 /etc/migrator
install -m 600 examples/demo-secrets.json "$SECRETS"

started_service=""
loader=""
cleanup() {
    [ -n "$loader" ] && kill "$loader" 2>/dev/null || true
    # Teardown first: it reads the remembered plan and secrets file, which is removed after it.
    if [ -z "${KEEP:-}" ]; then
        "$MIGRATOR" teardown "$PLAN" --secrets "$SECRETS" >/dev/null 2>&1 \
            || echo "demo: teardown failed; run: migrator teardown $PLAN" >&2
        [ -n "$started_service" ] && kill "$started_service" 2>/dev/null || true
    fi
}
trap cleanup EXIT

if ! curl -fsS --unix-socket "$SOCK" http://d/_ping >/dev/null 2>&1; then
    step "starting the podman API service on $SOCK"
    mkdir -p "$(dirname "$SOCK")"
    podman system service --time=0 "unix://$SOCK" >/var/log/migrator-demo-podman.log 2>&1 &
    started_service=$!
    for _ in $(seq 100); do curl -fsS --unix-socket "$SOCK" http://d/_ping >/dev/null 2>&1 && break; sleep 0.1; done
fi

step "validate the plan";          "$MIGRATOR" validate "$PLAN" --secrets "$SECRETS"
step "preflight the VSN";          "$MIGRATOR" check "$PLAN" --secrets "$SECRETS"
# A previous demo run may have left its stack: teardown is idempotent and keeps data.
"$MIGRATOR" teardown "$PLAN" --secrets "$SECRETS" >/dev/null 2>&1 || true
step "deploy";                     "$MIGRATOR" deploy "$PLAN" --secrets "$SECRETS"
step "status";                     "$MIGRATOR" status

step "write data: a page, and rows a client commits to MariaDB from now on"
date -u +"demo page written %FT%TZ" > "$DATA/webdata/www/index.html"
curl -fsS http://127.0.0.1:18080/
# The client's password comes from the secrets file, through the environment (never argv).
MIGRATOR_DEMO_DB_PASSWORD=$(.venv/bin/python -c 'import json,sys; print(json.load(open(sys.argv[1]))["db_password"])' "$SECRETS")
export MIGRATOR_DEMO_DB_PASSWORD
LOADER_STATE=$(mktemp -d)/loader.json
.venv/bin/python examples/demo_db.py load --port 13306 --state "$LOADER_STATE" &
loader=$!
acked() { .venv/bin/python -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d[sys.argv[2]] if sys.argv[2] != "stop" else d["outages"][-1])' "$LOADER_STATE" "$1"; }
for _ in $(seq 600); do [ -s "$LOADER_STATE" ] && [ "$(acked acked)" -ge 200 ] && break; sleep 0.2; done
echo "the client has committed $(acked acked) rows so far, and keeps going"

step "backup to file://$STORE (MariaDB stops only for phase 2; its dump is streamed beside the files)"
"$MIGRATOR" backup --to "file://$STORE" --tag demo
step "change a page, back up again (incremental on the first: kind, parent and sizes in the listing)"
echo "<p>edited after the first backup</p>" >> "$DATA/webdata/www/index.html"
"$MIGRATOR" backup --to "file://$STORE" --tag demo
step "snapshots";                  "$MIGRATOR" snapshots --from "file://$STORE"
step "verify --read-data";         "$MIGRATOR" verify latest --from "file://$STORE" --read-data

step "stop the client"
touch "$LOADER_STATE.stop"; wait "$loader"; loader=""
stopped_at=$(acked stop)
echo "the client committed $(acked acked) rows; the latest backup stopped MariaDB after row $stopped_at"

step "teardown and wipe the data dirs"
"$MIGRATOR" teardown
# webdata did not change since the backup: it must come back byte-identical.
fp() { (cd "$1" && find . -printf '%p %m %U:%G %s %T@ %l\n' | sort && find . -type f -print0 | sort -z | xargs -0 sha256sum); }
before=$(mktemp); after=$(mktemp)
fp "$DATA/webdata" > "$before"
rm -rf "${DATA:?}"/*
echo "data root now holds $(ls -A "$DATA" | wc -l) entries"

step "restore latest (an incremental is rebuilt from its chain)"
"$MIGRATOR" restore latest --from "file://$STORE"
step "verify the restored data"
fp "$DATA/webdata" > "$after"
if diff -u "$before" "$after"; then echo "webdata is byte-identical (contents, modes, owners, mtimes, links)"; else
    echo "restored webdata differs" >&2; exit 1; fi
rm -f "$before" "$after"

step "redeploy on the restored data"; "$MIGRATOR" deploy "$PLAN" --secrets "$SECRETS"
curl -fsS http://127.0.0.1:18080/
rows=$(.venv/bin/python examples/demo_db.py check --port 13306)
# MariaDB was stopped for phase 2 after row $stopped_at: the restored database holds exactly those rows (or
# one more: a commit in flight at the stop), each one intact, and not a row after.
if [ "$rows" -ge "$stopped_at" ] && [ "$rows" -le $((stopped_at + 1)) ]; then
    echo "MariaDB started on the restored files and holds rows 1..$rows, every one intact (stopped after $stopped_at)"
else echo "restored database holds $rows rows; the backup stopped it after $stopped_at" >&2; exit 1; fi

scratch=app_dump_$(date -u +%H%M%S)   # a new name each run: an earlier run's scratch database is in the data
step "load the snapshot's dump into a scratch database ($scratch) beside the restored one"
"$MIGRATOR" load-dump latest db --as "$scratch" --from "file://$STORE"
echo "the dump holds rows 1..$(.venv/bin/python examples/demo_db.py check --port 13306 --database "$scratch"), every one intact"
step "demo finished"

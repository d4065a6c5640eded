#!/usr/bin/env bash
# `make demo`: the main job on the built-in demo plan, end to end, on this machine's podman:
#   validate -> check -> deploy (Host container + REST containers) -> write data -> backup -> change ->
#   incremental backup -> teardown + wipe the data dirs -> restore latest -> verify byte-identical -> redeploy -> serve.
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
cleanup() {
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

step "write data"
date -u +"demo page written %FT%TZ" > "$DATA/webdata/www/index.html"
curl -fsS http://127.0.0.1:18080/
for _ in $(seq 50); do [ -s "$DATA/dbdata/data/log.txt" ] && break; sleep 0.2; done
echo "db writer has written $(wc -l < "$DATA/dbdata/data/log.txt") lines"

step "backup to file://$STORE";   "$MIGRATOR" backup --to "file://$STORE" --tag demo
step "change a page, back up again (incremental on the first: kind, parent and sizes in the listing)"
echo "<p>edited after the first backup</p>" >> "$DATA/webdata/www/index.html"
"$MIGRATOR" backup --to "file://$STORE" --tag demo
step "snapshots";                  "$MIGRATOR" snapshots --from "file://$STORE"
step "verify --read-data";         "$MIGRATOR" verify latest --from "file://$STORE" --read-data

step "teardown and wipe the data dirs"
"$MIGRATOR" teardown
# webdata did not change since the backup: it must come back byte-identical. dbdata kept being written by
# the db service after the snapshot: the restored log must be an exact prefix of what it grew to.
fp() { (cd "$1" && find . -printf '%p %m %U:%G %s %T@ %l\n' | sort && find . -type f -print0 | sort -z | xargs -0 sha256sum); }
before=$(mktemp); after=$(mktemp); dblog=$(mktemp)
fp "$DATA/webdata" > "$before"
cp "$DATA/dbdata/data/log.txt" "$dblog"
rm -rf "${DATA:?}"/*
echo "data root now holds $(ls -A "$DATA" | wc -l) entries"

step "restore latest (an incremental is rebuilt from its chain)"
"$MIGRATOR" restore latest --from "file://$STORE"
step "verify the restored data"
fp "$DATA/webdata" > "$after"
if diff -u "$before" "$after"; then echo "webdata is byte-identical (contents, modes, owners, mtimes, links)"; else
    echo "restored webdata differs" >&2; exit 1; fi
restored=$(stat -c %s "$DATA/dbdata/data/log.txt")
if cmp -s -n "$restored" "$DATA/dbdata/data/log.txt" "$dblog"; then
    echo "dbdata log restored as a consistent prefix ($restored of $(stat -c %s "$dblog") bytes at teardown)"
else echo "restored db log is not a prefix of the live one" >&2; exit 1; fi
rm -f "$before" "$after" "$dblog"

step "redeploy on the restored data"; "$MIGRATOR" deploy "$PLAN" --secrets "$SECRETS"
curl -fsS http://127.0.0.1:18080/
step "demo finished"

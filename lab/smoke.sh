#!/usr/bin/env bash
# End-to-end smoke test of the lab topology on this machine:
#   a. a VSN engine (own storage, shared read-only lab images) on its socket
#   b. the privileged Host container on it, inner podman socket bind-mounted out
#   c. images loaded into the inner podman through the API; a volume container
#      with a bind-mounted data dir, an httpd service with volumes_from, its port
#      published through the Host; a writer that stops cleanly; Host restart
#   e. the flat equivalent: the same REST containers directly on a VSN engine
# Cleans up everything it started (by pid / by VSN dir). Exit 0 = all good.
set -euo pipefail

LAB=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
WORK=$(mktemp -d /tmp/mlab.XXXXXX)   # short: socket paths live below it
NESTED=$WORK/n
FLAT=$WORK/f

cleanup() {
    local rc=$?
    "$LAB/vsn.sh" purge "$NESTED" >/dev/null 2>&1 || true
    "$LAB/vsn.sh" purge "$FLAT" >/dev/null 2>&1 || true
    rm -rf "$WORK"
    if [ $rc -eq 0 ]; then echo "smoke: PASS"; else echo "smoke: FAIL (rc=$rc)" >&2; fi
    exit $rc
}
trap cleanup EXIT

now() { date +%s.%N; }
T=$(now)
step() { # message; prints the time since the previous step
    local t; t=$(now)
    printf 'smoke: %-58s %6.2fs\n' "$1" "$(echo "$t - $T" | bc)"
    T=$t
}
fail() { echo "smoke: FAILED: $*" >&2; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_for() { # timeout_s command... : poll every 50 ms
    local n=$(( $1 * 20 )); shift
    for _ in $(seq "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.05; done
    return 1
}
ping_sock() { curl -sf --max-time 2 --unix-socket "$1" http://d/v4.0.0/libpod/_ping; }
copy_image() { # from_sock to_sock image : podman save on one engine -> load on the other
    # one image per request: a multi-reference /images/export is broken on 4.3
    curl -sf --unix-socket "$1" "http://d/v4.0.0/libpod/images/${3//\//%2F}/get" \
        | curl -sf --unix-socket "$2" -X POST -H 'Content-Type: application/x-tar' \
            --data-binary @- http://d/v4.0.0/libpod/images/load >/dev/null
}

"$LAB/build-images.sh" >/dev/null
step "images built/cached"

# -- a. VSN engine -------------------------------------------------------------
"$LAB/vsn.sh" start "$NESTED" >/dev/null
OUTER=(podman --url "unix://$NESTED/podman.sock")
"${OUTER[@]}" image exists localhost/migrator-host:latest || fail "lab images not visible in the VSN"
step "a. VSN engine up (own root, shared image store)"

# -- b. Host container ---------------------------------------------------------
HOSTPORT=$(free_port)
DATA=$NESTED/data
mkdir -p "$DATA/web/www" "$DATA/db/data"
"${OUTER[@]}" run -d --name migrator-host --privileged \
    -v "$DATA:$DATA" -v "$NESTED/inner:/run/migrator-inner" \
    -p "127.0.0.1:$HOSTPORT:8080" localhost/migrator-host:latest >/dev/null
step "b. Host container created and started"
INNER_SOCK=$NESTED/inner/podman.sock
wait_for 30 ping_sock "$INNER_SOCK" || fail "inner socket never answered"
step "b. inner podman socket answers"
INNER=(podman --url "unix://$INNER_SOCK")

# -- c. REST containers inside the Host -----------------------------------------
for img in busybox httpd writer; do
    copy_image "$NESTED/podman.sock" "$INNER_SOCK" "localhost/migrator-$img:latest"
done
"${INNER[@]}" image exists localhost/migrator-httpd:latest || fail "image load into inner failed"
step "c. 3 images copied outer -> inner through the API"
"${INNER[@]}" create --name vol-web -v "$DATA/web/www:/data" localhost/migrator-busybox:latest true >/dev/null
"${INNER[@]}" create --name vol-db -v "$DATA/db/data:/data" localhost/migrator-busybox:latest true >/dev/null
step "c. volume containers created"
"${INNER[@]}" run -d --name web --restart always --volumes-from vol-web -p 8080:8080 \
    localhost/migrator-httpd:latest >/dev/null
"${INNER[@]}" run -d --name db --volumes-from vol-db localhost/migrator-writer:latest >/dev/null
step "c. service containers started"
wait_for 20 curl -sf --max-time 1 "http://127.0.0.1:$HOSTPORT/" || fail "no answer on 127.0.0.1:$HOSTPORT"
body=$(curl -sf "http://127.0.0.1:$HOSTPORT/")
[ "$body" = "$(cat "$DATA/web/www/index.html")" ] || fail "served page is not the data dir's index.html"
step "c. GET 127.0.0.1:$HOSTPORT/ -> Host -> web (200, data dir content)"
wait_for 10 test -s "$DATA/db/data/state/counter" || fail "writer wrote nothing"
"${INNER[@]}" exec db wget -q -O - http://127.0.0.1:8081/counter >/dev/null || fail "writer http probe"
"${INNER[@]}" stop -t 10 db >/dev/null
code=$("${INNER[@]}" inspect db --format '{{.State.ExitCode}}')
[ "$code" = 0 ] || fail "writer exit code $code on SIGTERM"
step "c. writer wrote, answered, stopped cleanly (exit 0)"
"${INNER[@]}" run --name dbfail -e WRITER_FAIL=1 localhost/migrator-writer:latest >/dev/null 2>&1 && fail "WRITER_FAIL=1 did not fail"
step "c. WRITER_FAIL=1 exits non-zero"
"${OUTER[@]}" restart -t 10 migrator-host >/dev/null
wait_for 30 ping_sock "$INNER_SOCK" || fail "inner socket not back after Host restart"
wait_for 20 curl -sf --max-time 1 "http://127.0.0.1:$HOSTPORT/" || fail "web not back after Host restart"
step "c. Host restarted: inner socket and restart=always web back"

# -- e. flat plan: REST containers directly on a VSN engine ------------------------
"$LAB/vsn.sh" start "$FLAT" >/dev/null
FLATP=(podman --url "unix://$FLAT/podman.sock")
FLATPORT=$(free_port)
mkdir -p "$FLAT/data/web/www"
echo flat > "$FLAT/data/web/www/index.html"
"${FLATP[@]}" create --name vol-web -v "$FLAT/data/web/www:/data" localhost/migrator-busybox:latest true >/dev/null
"${FLATP[@]}" run -d --name web --volumes-from vol-web -p "127.0.0.1:$FLATPORT:8080" \
    localhost/migrator-httpd:latest >/dev/null
wait_for 20 curl -sf --max-time 1 "http://127.0.0.1:$FLATPORT/" || fail "flat web not answering"
[ "$(curl -sf "http://127.0.0.1:$FLATPORT/")" = flat ] || fail "flat web serves the wrong data"
step "e. flat: second VSN engine, volume + web, GET 127.0.0.1:$FLATPORT/"

# -- teardown (timed; the trap purges anything left on failure) ----------------------
"$LAB/vsn.sh" purge "$NESTED" >/dev/null
"$LAB/vsn.sh" purge "$FLAT" >/dev/null
step "teardown: both VSNs purged"

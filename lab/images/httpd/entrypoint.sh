#!/bin/sh
# migrator-httpd: a web app stand-in. Serves /www (a symlink to /data) on
# ${HTTPD_PORT:-8080}; seeds /data/index.html when it is missing so a fresh
# deployment answers GET / with 200 and a restored one serves the old data.
# httpd runs as a child so SIGTERM stops us at once (PID 1 ignores unhandled signals).
port=${HTTPD_PORT:-8080}
mkdir -p /data
if [ ! -f /data/index.html ]; then
    printf 'migrator-httpd on %s, seeded %s\n' "$(hostname)" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
        > /data/index.html.tmp
    mv /data/index.html.tmp /data/index.html
fi
httpd -f -p "$port" -h /www &
pid=$!
stopping=0
trap 'stopping=1; kill "$pid" 2>/dev/null' TERM INT
echo "migrator-httpd: serving /www on :$port"
wait "$pid"; rc=$?
if [ "$stopping" = 1 ]; then wait "$pid" 2>/dev/null; exit 0; fi
exit "$rc"

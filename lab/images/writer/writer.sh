#!/bin/sh
# migrator-writer: a database stand-in that never stops writing.
#  - every ${WRITER_INTERVAL:-0.2}s appends "<n> <utc time>" to /data/log.txt and
#    atomically rewrites /data/state/counter (write tmp + rename);
#  - serves http on ${WRITER_PORT:-8081}: GET / -> "ok", GET /counter -> counter;
#    a plain TCP connect works as a probe too;
#  - exits 0 on SIGTERM/SIGINT, after finishing the current write;
#  - WRITER_FAIL=1 -> exit 1 at once (for rollback tests).
if [ "${WRITER_FAIL:-0}" = "1" ]; then
    echo "migrator-writer: WRITER_FAIL=1, failing on purpose" >&2
    exit 1
fi
interval=${WRITER_INTERVAL:-0.2}
port=${WRITER_PORT:-8081}
mkdir -p /data/state /www
echo ok > /www/index.html
ln -sf /data/state/counter /www/counter
n=0
[ -f /data/state/counter ] && n=$(cat /data/state/counter 2>/dev/null || echo 0)
case "$n" in ''|*[!0-9]*) n=0 ;; esac

httpd -f -p "$port" -h /www &
httpd_pid=$!
running=1
trap 'running=0' TERM INT
echo "migrator-writer: writing /data from n=$n every ${interval}s, http on :$port"
while [ "$running" = 1 ]; do
    n=$((n + 1))
    echo "$n $(date -u +%Y-%m-%dT%H:%M:%SZ)" >> /data/log.txt
    echo "$n" > /data/state/counter.tmp
    mv /data/state/counter.tmp /data/state/counter
    sleep "$interval" &
    wait $! 2>/dev/null || true
done
kill "$httpd_pid" 2>/dev/null
wait "$httpd_pid" 2>/dev/null
echo "migrator-writer: stopped cleanly at n=$n"
exit 0

#!/usr/bin/env bash
# A lab "VSN": one outer podman engine with its own storage, runtime dirs,
# network and API socket, sharing the built lab images read-only.
#
#   lab/vsn.sh start DIR     generate DIR/{containers,storage}.conf, start
#                            `podman system service` on DIR/podman.sock, write
#                            its pid to DIR/service.pid, wait until it answers
#   lab/vsn.sh env DIR       print the exports that make `podman` (local, or
#                            `podman --remote` via the socket) act on this VSN
#   lab/vsn.sh stop DIR      remove all of the VSN's containers (the Host
#                            container takes its inner containers with it),
#                            stop the service by pid, free the subnet
#   lab/vsn.sh purge DIR     stop, unmount leftovers, rm -rf DIR
#
# DIR must be short: DIR/inner/podman.sock (the Host container's socket,
# bind-mounted out) must stay under the 108-byte unix socket path limit.
# Each VSN gets its own bridge mlabN and subnet 172.29.N.0/24 (N claimed
# atomically under /run/migrator-lab/subnets), so VSNs can run side by side.
# 172.29/16 lies outside podman's default pools for new networks (10.89.0.0/16
# and up): a plan's own network, which podman numbers 10.89.x.0/24 after what
# the host routes already use, can never land on a lab bridge's subnet.
set -euo pipefail

LAB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
IMAGE_STORE=${MIGRATOR_LAB_STORE:-/var/lib/migrator-lab/images}
CLAIMS=/run/migrator-lab/subnets
LAB_NET=172.29
START_TIMEOUT_S=20   # the service answers _ping in ~0.1 s; allow a loaded machine

die() { echo "vsn: $*" >&2; exit 1; }
# A pid that runs and is not a zombie (a killed service nobody reaped still answers `kill -0`).
alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]; }

[ $# -eq 2 ] || { sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }
cmd=$1
dir=$(realpath -m "$2")
[ ${#dir} -le 80 ] || die "DIR too long (${#dir} > 80 chars): socket paths are limited to 108 bytes"

claim_subnet() { # -> N, claimed for $dir
    local n
    mkdir -p "$CLAIMS"
    for n in $(seq 1 250); do
        if mkdir "$CLAIMS/$n" 2>/dev/null; then
            echo "$dir" > "$CLAIMS/$n/owner"
            echo "$n"
            return
        fi
    done
    die "no free lab subnet in $CLAIMS"
}

drop_rules() { # prefix ("172.29.5."): netavark's iptables rules for that /24
    # netavark removes a container's port forwarding and NAT rules on teardown; a
    # podman service that died (a test SIGKILLs one) never tears down, and its
    # DNAT rules outlive it: a later VSN publishing the same port, or reusing a
    # container IP, would be forwarded into the void ("No route to host"). Rules
    # are per subnet, so only ours go; a port's shared rules (the jump to the DNAT
    # chain, the localhost mark) go when no DNAT for that port is left.
    local net="$1" table rule p ports
    ports=$(iptables -w -t nat -S | grep -F -- "--to-destination $net" | grep -o -- "--dport [0-9]*" \
            | awk '{print $2}' | sort -u || true)
    for table in nat filter; do
        iptables -w -t "$table" -S | grep -F -- " $net" | grep -- "^-A " | while IFS= read -r rule; do
            eval "iptables -w -t $table -D ${rule#-A }" 2>/dev/null || true
        done || true  # grep finding nothing is fine
    done
    for p in $ports; do
        iptables -w -t nat -S | grep -q -- "--dport $p -j DNAT" && continue
        iptables -w -t nat -S | grep -- "^-A NETAVARK.* --dport $p " | while IFS= read -r rule; do
            eval "iptables -w -t nat -D ${rule#-A }" 2>/dev/null || true
        done || true
    done
}

drop_networks() {
    # The plans' own networks of this VSN (DIR/networks/*.json besides podman.json)
    # whose bridge a dead service left up: bridge and rules go, so a later network
    # on the same subnet routes. Only a bridge that still carries this network's
    # gateway: once netavark tore it down, its name and subnet may be another's.
    local f line iface subnet gw
    for f in "$dir"/networks/*.json; do
        [ -f "$f" ] && [ "$(basename "$f")" != podman.json ] || continue
        line=$(python3 -c 'import json, sys
n = json.load(open(sys.argv[1]))
s = (n.get("subnets") or [{}])[0]
print(n.get("network_interface", ""), s.get("subnet", ""), s.get("gateway", ""))' "$f" 2>/dev/null) || continue
        read -r iface subnet gw <<< "$line"
        [ -n "$iface" ] && [ -n "$gw" ] || continue
        ip -o -4 addr show dev "$iface" 2>/dev/null | grep -qF " $gw/" || continue
        case "$subnet" in *.0/24) drop_rules "${subnet%0/24}" ;; esac
        ip link del "$iface" 2>/dev/null || true
    done
}

write_configs() { # n
    local n=$1
    mkdir -p "$dir"/{storage,run,tmp,networks,inner,data}
    # podman 4.3 reads one containers.conf only (CONTAINERS_CONF replaces, no
    # drop-ins) and --root drops storage.conf's options: so both files are
    # generated per VSN. tmp_dir defaults to /run/libpod and the network dir to
    # /etc/containers/networks for every engine: they must not be shared.
    awk -v tmp="$dir/tmp" -v net="$dir/networks" '
        { print }
        /^\[engine\]$/  { print "tmp_dir = \"" tmp "\"" }
        /^\[network\]$/ { print "network_config_dir = \"" net "\"" }
    ' "$LAB_DIR/containers.conf" > "$dir/containers.conf"
    cat > "$dir/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$dir/storage"
runroot = "$dir/run"

[storage.options]
additionalimagestores = ["$IMAGE_STORE"]

[storage.options.overlay]
mountopt = "nodev"
EOF
    # The default network "podman" is redefined per VSN: its own bridge and
    # subnet, so two VSN engines on one machine do not hand out the same IPs.
    cat > "$dir/networks/podman.json" <<EOF
{
  "name": "podman",
  "id": "2f259bab93aaaaa2542ba43ef33eb990d0999ee1b9924b557b7be53c0b7a1bb9",
  "driver": "bridge",
  "network_interface": "mlab$n",
  "created": "2024-01-01T00:00:00Z",
  "subnets": [{"subnet": "$LAB_NET.$n.0/24", "gateway": "$LAB_NET.$n.1"}],
  "ipv6_enabled": false,
  "internal": false,
  "dns_enabled": false,
  "ipam_options": {"driver": "host-local"}
}
EOF
    echo "$n" > "$dir/subnet"
}

env_lines() {
    cat <<EOF
export CONTAINERS_CONF='$dir/containers.conf'
export CONTAINERS_STORAGE_CONF='$dir/storage.conf'
export CONTAINER_HOST='unix://$dir/podman.sock'
EOF
}

podman_local() {
    CONTAINERS_CONF="$dir/containers.conf" CONTAINERS_STORAGE_CONF="$dir/storage.conf" podman "$@"
}

start() {
    local n pid i
    if [ -f "$dir/service.pid" ] && alive "$(cat "$dir/service.pid")"; then
        die "already running (pid $(cat "$dir/service.pid"))"
    fi
    if [ -f "$dir/subnet" ] && [ "$(cat "$CLAIMS/$(cat "$dir/subnet")/owner" 2>/dev/null)" = "$dir" ]; then
        n=$(cat "$dir/subnet")
    else
        n=$(claim_subnet)
    fi
    write_configs "$n"
    rm -f "$dir/podman.sock"
    CONTAINERS_CONF="$dir/containers.conf" CONTAINERS_STORAGE_CONF="$dir/storage.conf" \
        setsid podman system service --time=0 "unix://$dir/podman.sock" \
        >> "$dir/service.log" 2>&1 < /dev/null &
    pid=$!
    echo "$pid" > "$dir/service.pid"
    for i in $(seq $((START_TIMEOUT_S * 20))); do
        if curl -sf --max-time 2 --unix-socket "$dir/podman.sock" http://d/v4.0.0/libpod/_ping >/dev/null 2>&1; then
            echo "vsn: $dir up: pid $pid, unix://$dir/podman.sock, bridge mlab$n $LAB_NET.$n.0/24"
            return
        fi
        alive "$pid" || { tail -n 5 "$dir/service.log" >&2; die "service exited"; }
        sleep 0.05
    done
    die "service did not answer within ${START_TIMEOUT_S}s"
}

conmons() { # [pattern]: pids of this VSN's conmons (bundle under $dir/storage) whose argv matches
    # A second VSN may live at the same path in another mount namespace (tests/lab/vsn2.py): its conmons
    # name the same $dir. A conmon runs in its podman service's mount namespace, so ours share ours.
    local p mine
    mine=$(readlink /proc/self/ns/mnt)
    for p in $(pgrep -x conmon || true); do
        if tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null | grep -q -- " -b $dir/storage/${1:-}" \
                && [ "$(readlink "/proc/$p/ns/mnt" 2>/dev/null)" = "$mine" ]; then
            echo "$p"
        fi
    done
}

kill_exec_conmons() {
    # `podman exec` leaves its conmon around for 300 s (--exit-delay) after the
    # exec'd process ended. Those of this VSN get SIGKILL: on SIGTERM they would
    # run `podman container cleanup`, which re-mounts the storage we are about to
    # remove.
    local p
    for p in $(conmons ".* --exec-attach "); do
        kill -KILL "$p" 2>/dev/null || true
    done
}

kill_orphans() {
    # Containers whose podman service died (a test SIGKILLs it) keep running under
    # their conmon, with nobody left to stop them. Every conmon of this VSN and the
    # container processes it supervises get SIGKILL; the kernel takes each
    # container's whole PID namespace with its init.
    # A container whose conmon died too is found by its root filesystem: an overlay whose upper dir lies
    # in our storage (/proc/PID/mountinfo; /proc/PID/root only shows "/" across mount namespaces).
    local p c
    for p in $(conmons); do
        for c in $(pgrep -P "$p" || true); do kill -KILL "$c" 2>/dev/null || true; done
        kill -KILL "$p" 2>/dev/null || true
    done
    # Same-path VSNs in other mount namespaces again: only an upper dir that exists here is ours.
    local up
    for p in /proc/[0-9]*; do
        up=$(awk -v up="upperdir=$dir/storage/" '$5 == "/" && (i = index($0, up)) {
                 s = substr($0, i + 9); sub(/[, ].*/, "", s); print s; exit }' "$p/mountinfo" 2>/dev/null || true)
        if [ -n "$up" ] && [ -d "$up" ]; then
            kill -KILL "${p#/proc/}" 2>/dev/null || true
        fi
    done
}

stop() {
    local pid n i
    kill_exec_conmons
    if [ -S "$dir/podman.sock" ] && [ -f "$dir/service.pid" ] && alive "$(cat "$dir/service.pid")"; then
        podman --url "unix://$dir/podman.sock" rm -af -t 2 >/dev/null 2>&1 || true
    elif [ -f "$dir/containers.conf" ]; then
        podman_local rm -af -t 2 >/dev/null 2>&1 || true
    fi
    if [ -f "$dir/service.pid" ]; then
        pid=$(cat "$dir/service.pid")
        if alive "$pid"; then
            kill -TERM "$pid"
            for i in $(seq 100); do alive "$pid" || break; sleep 0.1; done
            alive "$pid" && kill -KILL "$pid"
        fi
        rm -f "$dir/service.pid"
    fi
    kill_orphans
    drop_networks
    if [ -f "$dir/subnet" ]; then
        n=$(cat "$dir/subnet")
        drop_rules "$LAB_NET.$n."
        ip link del "mlab$n" 2>/dev/null || true
        if [ "$(cat "$CLAIMS/$n/owner" 2>/dev/null)" = "$dir" ]; then rm -rf "${CLAIMS:?}/$n"; fi
    fi
    echo "vsn: $dir stopped"
}

purge() {
    local i
    stop
    kill_exec_conmons
    for i in 1 2 3 4 5; do
        # overlay/shm mounts, and the bind mount podman puts on storage/overlay
        grep -o " $dir/[^ ]*" /proc/self/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
        rm -rf "$dir" 2>/dev/null && { echo "vsn: $dir purged"; return; }
        sleep 0.2
    done
    die "could not remove $dir"
}

case "$cmd" in
    start) start ;;
    stop) stop ;;
    purge) purge ;;
    env) env_lines ;;
    *) die "unknown command $cmd" ;;
esac

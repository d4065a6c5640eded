#!/usr/bin/env bash
# Load the lab images into a Docker Engine (no registry, no rebuild).
#
#   lab/docker-images.sh DOCKER_HOST [busybox|httpd|writer|host]...
#
# The images come from the shared podman lab store that lab/build-images.sh
# fills (and caches by recipe hash): `podman save` (docker-archive) piped into
# `docker load`, so both engines run the very same layers, configs and labels.
# An image is skipped when the daemon already holds localhost/migrator-<name>
# with the same org.migrator.recipe label (its recipe hash): a daemon whose data
# root outlives a test session loads each image once per recipe.
set -euo pipefail

CACHE=${MIGRATOR_LAB_CACHE:-/var/cache/migrator-lab}
ROOT=${MIGRATOR_LAB_STORE:-/var/lib/migrator-lab/images}
RUNROOT=${MIGRATOR_LAB_RUNROOT:-/run/migrator-lab/images}
DRIVER=${MIGRATOR_LAB_DRIVER:-overlay}
ALL_IMAGES=(busybox httpd writer host)

usage() { sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[ $# -ge 1 ] || usage
export DOCKER_HOST=$1
shift
images=("$@")
[ ${#images[@]} -gt 0 ] || images=("${ALL_IMAGES[@]}")

PODMAN=(podman --root "$ROOT" --runroot "$RUNROOT" --storage-driver "$DRIVER")
# Never a VSN's containers.conf (its tmp_dir); the build's storage.conf (the store must not list itself).
export CONTAINERS_CONF=${CONTAINERS_CONF_LAB:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/containers.conf}
export CONTAINERS_STORAGE_CONF=$CACHE/storage-build.conf

label() { sed -n 's/^recipe=//p'; }
locked=
for name in "${images[@]}"; do
    case "$name" in busybox|httpd|writer|host) ;; *) echo "docker-images: unknown image $name" >&2; usage ;; esac
    ref=localhost/migrator-$name:latest
    want=$("${PODMAN[@]}" image inspect --format 'recipe={{index .Labels "org.migrator.recipe"}}' "$ref" | label) \
        || { echo "docker-images: $ref is not in the lab store $ROOT: run lab/build-images.sh first" >&2; exit 1; }
    have=$(docker image inspect --format 'recipe={{index .Config.Labels "org.migrator.recipe"}}' "$ref" 2>/dev/null | label || true)
    if [ -n "$want" ] && [ "$have" = "$want" ]; then
        echo "docker-images: $name up to date (${want:0:12})"
        continue
    fi
    if [ -z "$locked" ]; then  # no rebuild of the store while we read it (a build holds this lock for minutes)
        mkdir -p "$CACHE"
        exec 9>"$CACHE/.lock"
        flock 9
        locked=1
    fi
    "${PODMAN[@]}" save --format docker-archive "$ref" | docker load -q >/dev/null
    docker tag "$ref" "localhost/migrator-$name:${want:0:12}"
    echo "docker-images: $name loaded (${want:0:12})"
done

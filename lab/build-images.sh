#!/usr/bin/env bash
# Build the migrator lab images with `podman import` (no registry, no pulls).
#
#   lab/build-images.sh [--root DIR --runroot DIR] [busybox|httpd|writer|host|mariadb|postgres]...
#
# Each image is tagged localhost/migrator-<name>:<hash12> and :latest, where
# hash12 is the sha256 of its recipe (this script + lab/images/<name>/ + the
# busybox recipe it builds on + the busybox-static version). An image whose
# :<hash12> tag exists is skipped. Root filesystems are cached as tarballs in
# $MIGRATOR_LAB_CACHE (default /var/cache/migrator-lab), so re-importing into a
# fresh storage root takes seconds even for the Host image.
#
# Default target: the shared lab image store $MIGRATOR_LAB_STORE
# (/var/lib/migrator-lab/images, overlay), which every VSN engine mounts
# read-only through `additionalimagestores` (see lab/storage.conf).
# --root/--runroot build into any other podman storage instead.
set -euo pipefail

LAB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${MIGRATOR_LAB_CACHE:-/var/cache/migrator-lab}
ROOT=${MIGRATOR_LAB_STORE:-/var/lib/migrator-lab/images}
RUNROOT=${MIGRATOR_LAB_RUNROOT:-/run/migrator-lab/images}
DRIVER=${MIGRATOR_LAB_DRIVER:-overlay}
ALL_IMAGES=(busybox httpd writer host mariadb postgres)
DEBIAN_IMAGES=" host mariadb postgres "   # debootstrap'ed; the rest are busybox-based

usage() { sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 2; }

images=()
while [ $# -gt 0 ]; do
    case "$1" in
        --root) ROOT=$2; shift 2 ;;
        --runroot) RUNROOT=$2; shift 2 ;;
        --driver) DRIVER=$2; shift 2 ;;
        -h|--help) usage ;;
        busybox|httpd|writer|host|mariadb|postgres) images+=("$1"); shift ;;
        *) echo "build-images: unknown argument: $1" >&2; usage ;;
    esac
done
[ ${#images[@]} -gt 0 ] || images=("${ALL_IMAGES[@]}")

[ "$(id -u)" = 0 ] || { echo "build-images: must run as root" >&2; exit 1; }

export CONTAINERS_CONF=$LAB_DIR/containers.conf   # never a VSN's (its tmp_dir)
mkdir -p "$CACHE" "$ROOT" "$RUNROOT"

# One build at a time per cache (tests may start several in parallel).
exec 9>"$CACHE/.lock"
flock 9

# The target store must not list itself as an additional image store, so the
# build uses its own minimal storage.conf rather than lab/storage.conf.
build_storage_conf=$CACHE/storage-build.conf
printf '[storage]\ndriver = "%s"\ngraphroot = "%s"\nrunroot = "%s"\n' \
    "$DRIVER" "$ROOT" "$RUNROOT" > "$build_storage_conf"
export CONTAINERS_STORAGE_CONF=$build_storage_conf
PODMAN=(podman --root "$ROOT" --runroot "$RUNROOT" --storage-driver "$DRIVER")

t0=$(date +%s)
say() { printf 'build-images: %s\n' "$*"; }

recipe_hash() { # name -> sha256 hex of everything that defines the image
    local name=$1 debian dirs=("$LAB_DIR/images/$name")
    case "$DEBIAN_IMAGES" in *" $name "*) debian=1 ;; *) debian=0 ;; esac
    [ "$name" = busybox ] || [ "$debian" = 1 ] || dirs+=("$LAB_DIR/images/busybox")
    {
        sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1
        [ "$debian" = 1 ] || dpkg-query -W -f='${Version}\n' busybox-static
        for d in "${dirs[@]}"; do
            (cd "$d" && find . \( -type f -o -type l \) -print0 | LC_ALL=C sort -z \
                | xargs -0 -r sha256sum)
        done
    } | sha256sum | cut -d' ' -f1
}

# -- busybox-based root filesystems ------------------------------------------
busybox_rootfs() { # dir -> a busybox root filesystem in dir
    local r=$1 applet
    mkdir -p "$r"/{bin,sbin,usr/bin,usr/sbin,etc,tmp,root,data,proc,sys,dev,run,var/tmp}
    chmod 1777 "$r/tmp" "$r/var/tmp"
    chmod 0700 "$r/root"
    install -m 0755 /bin/busybox "$r/bin/busybox"
    for applet in $(/bin/busybox --list-full); do
        [ -e "$r/$applet" ] || ln -s /bin/busybox "$r/$applet"
    done
    cp -a "$LAB_DIR/images/busybox/rootfs/." "$r/"
}

rootfs_busybox() { busybox_rootfs "$1"; }
rootfs_httpd() {
    busybox_rootfs "$1"
    mkdir -p "$1/usr/local/bin"
    install -m 0755 "$LAB_DIR/images/httpd/entrypoint.sh" "$1/usr/local/bin/migrator-httpd"
    ln -s /data "$1/www"
}
rootfs_writer() {
    busybox_rootfs "$1"
    mkdir -p "$1/usr/local/bin" "$1/www"
    install -m 0755 "$LAB_DIR/images/writer/writer.sh" "$1/usr/local/bin/migrator-writer"
}

# -- the Host image: Debian + podman ------------------------------------------
apt_mirror() { # the Debian mirror the machine's apt uses (main archive, not security)
    if [ -n "${MIGRATOR_LAB_MIRROR:-}" ]; then echo "$MIGRATOR_LAB_MIRROR"; return; fi
    local m
    m=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | sed -n -e 's/^deb \(\[[^]]*\] \)\{0,1\}\([a-z]*:\/\/[^ ]*\) .*/\2/p' -e 's/^URIs: *//p' \
        | tr ' ' '\n' | grep -E '/debian/?$' | head -n1)
    if [ -z "$m" ]; then
        echo "build-images: no Debian mirror in this machine's apt sources (/etc/apt/sources.list{,.d/})." >&2
        echo "build-images: add one there, or name it: MIGRATOR_LAB_MIRROR=http://<mirror>/debian $0" >&2
        return 1
    fi
    echo "$m"
}

debian_rootfs() { # name dir -> Debian minbase + lab/images/<name>/packages installed with apt in the chroot
    local name=$1 r=$2 suite variant mirror pkgs
    suite=$(sed -n 's/^SUITE=//p' "$LAB_DIR/images/host/recipe")
    variant=$(sed -n 's/^VARIANT=//p' "$LAB_DIR/images/host/recipe")
    mirror=$(apt_mirror)
    pkgs=$(grep -v '^\s*#' "$LAB_DIR/images/$name/packages" | xargs)
    mkdir -p "$CACHE/debs"
    say "$name: debootstrap --variant=$variant $suite from $mirror"
    debootstrap --variant="$variant" --cache-dir="$CACHE/debs" "$suite" "$r" "$mirror" \
        > "$CACHE/debootstrap-$name.log" 2>&1 \
        || { tail -n 20 "$CACHE/debootstrap-$name.log" >&2; return 1; }
    printf 'deb %s %s main\ndeb %s %s-updates main\n' "$mirror" "$suite" "$mirror" "$suite" \
        > "$r/etc/apt/sources.list"
    cp /etc/resolv.conf "$r/etc/resolv.conf"
    printf '#!/bin/sh\nexit 101\n' > "$r/usr/sbin/policy-rc.d"   # no daemons start in the chroot
    chmod 0755 "$r/usr/sbin/policy-rc.d"
    say "$name: apt-get install $pkgs (inside the chroot)"
    # podman cannot go through debootstrap --include (dependency resolution fails).
    mkdir -p "$r/var/cache/apt/archives/partial"
    cp -a "$CACHE/debs/." "$r/var/cache/apt/archives/" 2>/dev/null || true
    chroot "$r" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
        sh -c "apt-get -q update && apt-get -q -y -o Dpkg::Use-Pty=0 install --no-install-recommends $pkgs" \
        > "$CACHE/apt-$name.log" 2>&1 \
        || { tail -n 20 "$CACHE/apt-$name.log" >&2; return 1; }
    cp -a "$r/var/cache/apt/archives/"*.deb "$CACHE/debs/" 2>/dev/null || true
}

debian_slim() { # dir -> drop what no lab image needs at run time
    local r=$1
    chroot "$r" apt-get clean
    rm -rf "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/*.bin "$r"/var/cache/debconf/*-old \
        "$r"/usr/share/doc/* "$r"/usr/share/man/* "$r"/usr/share/info/* "$r"/usr/share/lintian \
        "$r"/usr/share/locale/* "$r"/usr/share/zoneinfo/right "$r"/var/log/*.log "$r"/var/log/apt/* "$r"/dev/* \
        "$r"/tmp/* "$r"/var/tmp/* "$r/usr/sbin/policy-rc.d"
    : > "$r/etc/resolv.conf"
}

rootfs_host() { # dir -> Debian minbase with podman, configured as the Host image
    local r=$1
    debian_rootfs host "$r"
    install -m 0644 "$LAB_DIR/images/host/containers.conf" "$r/etc/containers/containers.conf"
    install -m 0644 "$LAB_DIR/images/host/storage.conf" "$r/etc/containers/storage.conf"
    install -m 0755 "$LAB_DIR/images/host/migrator-host-init" "$r/usr/local/sbin/migrator-host-init"
    mkdir -p "$r/run/migrator-inner" "$r/var/lib/containers/storage"
    # Make it small: gnupg comes in only as a dependency of libgpgme11 (image signatures), which the lab
    # never uses.
    chroot "$r" dpkg --purge --force-depends gnupg gnupg-l10n gnupg-utils gpg-wks-server \
        gpg-wks-client gpgsm dirmngr gpg-agent pinentry-curses >> "$CACHE/apt-host.log" 2>&1
    debian_slim "$r"
    echo migrator-host > "$r/etc/hostname"
}

rootfs_mariadb() { # dir -> Debian minbase + MariaDB, data on a volume container's mount
    local r=$1
    debian_rootfs mariadb "$r"
    install -m 0755 "$LAB_DIR/images/mariadb/entrypoint.sh" "$r/usr/local/bin/migrator-mariadb"
    rm -rf "$r/var/lib/mysql"/*     # the package's own datadir; ours is initialised on the mount
    debian_slim "$r"
}

rootfs_postgres() { # dir -> Debian minbase + PostgreSQL, cluster on a volume container's mount
    local r=$1
    debian_rootfs postgres "$r"
    install -m 0755 "$LAB_DIR/images/postgres/entrypoint.sh" "$r/usr/local/bin/migrator-postgres"
    # Debian puts pg_amcheck only in the versioned bin dir (pg_wrapper links the common clients).
    ln -s "$(cd "$r" && ls -d usr/lib/postgresql/*/bin | tail -n 1 | sed 's|^|/|')/pg_amcheck" "$r/usr/local/bin/pg_amcheck"
    rm -rf "$r/var/lib/postgresql"/*/main "$r/etc/postgresql"/*/main   # the package's cluster; ours is on the mount
    debian_slim "$r"
}

# -- per-image import parameters ----------------------------------------------
changes_for() { # name -> --change arguments, one per line
    case "$1" in
        busybox) printf '%s\n' 'CMD ["sh"]' 'WORKDIR /' ;;
        httpd) printf '%s\n' 'CMD ["/usr/local/bin/migrator-httpd"]' 'EXPOSE 8080' 'ENV HTTPD_PORT=8080' ;;
        writer) printf '%s\n' 'CMD ["/usr/local/bin/migrator-writer"]' 'EXPOSE 8081' 'ENV WRITER_PORT=8081' ;;
        host) printf '%s\n' 'ENTRYPOINT ["/usr/bin/catatonit", "--"]' \
                  'CMD ["/usr/local/sbin/migrator-host-init"]' \
                  'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' ;;
        mariadb) printf '%s\n' 'CMD ["/usr/local/bin/migrator-mariadb"]' 'EXPOSE 3306' \
                  'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' ;;
        postgres) printf '%s\n' 'CMD ["/usr/local/bin/migrator-postgres"]' 'EXPOSE 5432' 'STOPSIGNAL SIGINT' \
                  'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' ;;
    esac
}

build_one() {
    local name=$1 hash tag ref tarball work start changes=() line
    start=$(date +%s)
    hash=$(recipe_hash "$name")
    tag=${hash:0:12}
    ref=localhost/migrator-$name
    if "${PODMAN[@]}" image exists "$ref:$tag"; then
        "${PODMAN[@]}" tag "$ref:$tag" "$ref:latest"
        say "$name: $ref:$tag up to date"
        return
    fi
    tarball=$CACHE/$name-$tag.tar.zst
    if [ ! -s "$tarball" ]; then
        say "$name: building root filesystem (recipe $tag)"
        work=$(mktemp -d "$CACHE/work-$name.XXXXXX")
        # shellcheck disable=SC2064
        trap "rm -rf '$work'" EXIT
        "rootfs_$name" "$work/rootfs"
        tar -C "$work/rootfs" --numeric-owner -cf - . | zstd -q -T0 -3 -o "$tarball.tmp"
        mv "$tarball.tmp" "$tarball"
        rm -rf "$work"
        trap - EXIT
        # keep only the current recipe's tarball
        find "$CACHE" -maxdepth 1 -name "$name-*.tar.zst*" ! -name "$name-$tag.tar.zst" -delete
    else
        say "$name: root filesystem cached ($tarball)"
    fi
    while IFS= read -r line; do changes+=(--change "$line"); done < <(changes_for "$name")
    say "$name: podman import -> $ref:$tag"
    # Import the *uncompressed* tar: importing the .tar.zst directly records the
    # compressed digest for the layer, and a later docker-archive export (podman
    # save, images/{name}/get?format=docker-archive, podman-py Image.save) then
    # fails to load elsewhere with "Digest did not match".
    zstd -q -dc "$tarball" | "${PODMAN[@]}" import -q "${changes[@]}" \
        --change "LABEL org.migrator.recipe=$hash" \
        --message "migrator lab $name $tag" - "$ref:$tag" >/dev/null
    "${PODMAN[@]}" tag "$ref:$tag" "$ref:latest"
    # Older recipes' images stay: a VSN engine may run a container on top of one
    # (removing a layer from an additional image store under a running container
    # breaks it). Prune them by hand when no lab engine runs: see lab/README.md.
    say "$name: done in $(( $(date +%s) - start ))s"
}

for name in "${images[@]}"; do build_one "$name"; done
say "all done in $(( $(date +%s) - t0 ))s (store $ROOT)"

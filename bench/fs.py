"""The bench's own filesystem: a journaled ext4 in an image file, loop-mounted (direct I/O) on the bench dir.

Why not the VM's root filesystem directly: it is ext4 *without a journal*, and on such a filesystem the
inode allocator skips every inode freed in the last 60 s (360 s while its inode-table block is dirty) —
`recently_deleted()` in fs/ext4/ialloc.c, called per candidate from `find_inode_bit()` only when
`s_journal == NULL`. After any bulk delete (a previous restore tree, another engineer's test dir)
creating files costs O(recent deletions) each: `zstd -d | tar -x` of the 1 GiB / 20k-file set took
6-18 s of system time instead of 2 s, depending on what was deleted how recently, which makes restore
timings meaningless. A journaled ext4 (what a VSN's data root normally is) does not run that check:
the same extraction takes ~1.6 s right after an `rm -rf`. `--direct-io=on` keeps the image's blocks
out of the host page cache, so data is cached once (in the bench filesystem), as on a real disk.

The image persists between runs (the data sets in it are reused); the mount and loop device exist only
while the bench runs. Before unmounting, `fstrim` hands the blocks of everything deleted back to the host
(the loop device turns discards into holes in the sparse image), so the image stays about as large as
the data sets in it.

A mount namespace created while the filesystem is mounted (another lab's `unshare --mount`, a container
started meanwhile) gets its own copy of the mount and keeps the filesystem, and so the loop device, in
use after we unmount: `losetup -d` then only marks the device autoclear, and the kernel detaches it when
the last such namespace goes away. Until then, mounting the image through a *second* loop device would
run two ext4 instances on the same blocks; so an existing loop device of the image is always reused
(mounting the same block device again shares its superblock).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

GIB = 1024**3
UMOUNT_TRIES = 10


def _run(*argv: str) -> str:
    return subprocess.run(list(argv), check=True, capture_output=True, text=True).stdout.strip()


def _source_of(mountpoint: Path) -> str | None:
    out = subprocess.run(["findmnt", "-n", "-o", "SOURCE", "--mountpoint", str(mountpoint)], capture_output=True,
                         text=True).stdout.strip()
    return out or None


def _backing_file(dev: str) -> str | None:
    try:
        return Path(f"/sys/block/{Path(dev).name}/loop/backing_file").read_text().strip()
    except OSError:
        return None


class LoopFS:
    def __init__(self, image: Path, mountpoint: Path, size_bytes: int, log=print):
        self.image = Path(image)
        self.mountpoint = Path(mountpoint)
        self.size = size_bytes
        self.log = log
        self.device: str | None = None

    def mount(self) -> None:
        src = _source_of(self.mountpoint)
        if src is not None:  # left mounted by a killed run: reuse it if it is ours
            if _backing_file(src) != str(self.image):
                raise SystemExit(f"{self.mountpoint} is already a mount point ({src}), not the bench image")
            self.device = src
            self.log(f"bench filesystem {self.mountpoint} already mounted from {src}")
        else:
            if self.mountpoint.exists() and any(self.mountpoint.iterdir()):
                raise SystemExit(f"{self.mountpoint} exists and is not empty: move it away (the bench mounts "
                                 f"its filesystem image there)")
            self.mountpoint.mkdir(parents=True, exist_ok=True)
            attached = self._attached()
            if attached:
                self.device = attached[0]
                self.log(f"{self.image} is still attached to {self.device} (a mount namespace of another process "
                         f"holds it): reusing that device")
            else:
                if not self.image.exists():
                    self.log(f"creating bench filesystem image {self.image} ({self.size / GIB:.0f} GiB sparse, ext4)")
                    with open(self.image, "wb") as fh:
                        fh.truncate(self.size)
                    _run("mkfs.ext4", "-q", "-F", "-L", "migbench", str(self.image))
                elif os.path.getsize(self.image) < self.size:
                    # Offline, on the image file: this kernel refuses ext4's on-line resize (EPERM).
                    self.log(f"growing {self.image} to {self.size / GIB:.0f} GiB")
                    with open(self.image, "r+b") as fh:
                        fh.truncate(self.size)
                    _run("e2fsck", "-f", "-y", str(self.image))
                    _run("resize2fs", str(self.image))
                self.device = _run("losetup", "--find", "--show", "--direct-io=on", str(self.image))
            _run("mount", self.device, str(self.mountpoint))
            self.log(f"bench filesystem: {self.image} on {self.device} mounted at {self.mountpoint}")
        if os.path.getsize(self.image) < self.size:
            self.log(f"{self.image} is smaller than this run's {self.size / GIB:.0f} GiB and in use, so it cannot "
                     f"grow now (unmount it, or let a run that mounts it grow it); going on with its current size")

    def _attached(self) -> list[str]:
        """Loop devices currently backed by the image (`losetup -j`: "/dev/loopN: [dev]:ino (path)")."""
        out = subprocess.run(["losetup", "-j", str(self.image)], capture_output=True, text=True).stdout
        return [line.split(":", 1)[0] for line in out.splitlines() if line.strip()]

    def unmount(self) -> None:
        if self.device is None:
            return
        subprocess.run(["fstrim", str(self.mountpoint)], capture_output=True)  # deleted blocks back to the host
        os.sync()
        for _ in range(UMOUNT_TRIES):
            if subprocess.run(["umount", str(self.mountpoint)], capture_output=True).returncode == 0:
                break
            time.sleep(0.5)
        else:
            subprocess.run(["umount", "-l", str(self.mountpoint)], capture_output=True)
        subprocess.run(["losetup", "-d", self.device], capture_output=True)
        time.sleep(0.5)  # detaching is asynchronous
        if self.device in self._attached():
            self.log(f"bench filesystem unmounted; {self.device} stays attached (autoclear) while other processes' "
                     f"mount namespaces still hold the filesystem: the kernel detaches it when they exit")
        else:
            self.log(f"bench filesystem unmounted, {self.device} detached")
        self.device = None

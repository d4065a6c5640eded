"""migrator.archive: capture -> extract round trips with real GNU tar, zstd and age (no mocks).

Also holds the helpers the other test_archive_* modules share: `fingerprint` (full metadata + content
of a tree), `capture` (write_archive into memory) and `restore`.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from migrator.archive import ArchiveError, ArchiveStats, extract_archive, write_archive
from migrator.archive.capture import tar_create_argv
from migrator.archive.tarstream import CaptureWalker
from migrator.errors import IntegrityError, UsageError

REPO = Path(__file__).resolve().parents[2]
ODD_UID, ODD_GID = 1234, 5678
ODD_MTIME_NS = 1_600_000_000_123_456_789


# -- helpers shared with test_archive_twophase.py and test_archive_hostile.py --------------------------------


class ListSink:
    def __init__(self):
        self.chunks: list[bytes] = []

    def write(self, b: bytes) -> None:
        self.chunks.append(bytes(b))

    def data(self) -> bytes:
        return b"".join(self.chunks)


def capture(root: Path, **kwargs) -> tuple[bytes, ArchiveStats]:
    sink = ListSink()
    stats = write_archive(root, [sink], **kwargs)
    return sink.data(), stats


def restore(data: bytes, dest: Path, stats: ArchiveStats | None = None, **kwargs):
    sha = stats.sha256 if stats else hashlib.sha256(data).hexdigest()
    return extract_archive(io.BytesIO(data), dest, expected_sha256=sha, expected_size=len(data), **kwargs)


def _xattrs(path: str) -> list[tuple[str, bytes]]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return []
    return sorted((n, os.getxattr(path, n, follow_symlinks=False)) for n in names)


def fingerprint(root: Path) -> dict[str, tuple]:
    """Everything restore must reproduce, per relative path: type, mode, owner, mtime (ns), size,
    content hash, symlink target, xattrs (ACLs included, as system.posix_acl_*), hard-link group."""
    out: dict[str, tuple] = {}
    inodes: dict[tuple[int, int], list[str]] = {}
    stack = ["."]
    while stack:
        rel = stack.pop()
        path = os.path.join(root, rel)
        st = os.lstat(path)
        mode = st.st_mode
        rec = [stat.S_IFMT(mode), stat.S_IMODE(mode), st.st_uid, st.st_gid, st.st_mtime_ns, _xattrs(path)]
        if stat.S_ISREG(mode):
            with open(path, "rb") as fh:
                rec += [st.st_size, hashlib.sha256(fh.read()).hexdigest(), st.st_nlink]
            inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
        elif stat.S_ISLNK(mode):
            rec += [os.readlink(path)]
        elif stat.S_ISDIR(mode):
            stack.extend(os.path.normpath(os.path.join(rel, n)) for n in os.listdir(path))
        out[rel] = tuple(rec)
    for names in inodes.values():  # hard links: every name of an inode carries the same group id
        for name in names:
            out[name] += (min(names),)
    return out


def user_xattrs_supported(directory: Path) -> bool:
    probe = directory / ".xattr-probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.probe", b"1")
        return True
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
            return False
        raise
    finally:
        probe.unlink()


def build_rich_tree(root: Path) -> None:
    """Every kind of thing a data directory holds."""
    root.mkdir()
    (root / "plain.txt").write_bytes(b"hello\n")
    (root / "secret.key").write_bytes(b"k" * 100)
    os.chmod(root / "secret.key", 0o600)
    (root / "owned").write_bytes(b"odd owner")
    os.chown(root / "owned", ODD_UID, ODD_GID)
    (root / "setgid-dir").mkdir()
    os.chmod(root / "setgid-dir", 0o2775)
    os.chown(root / "setgid-dir", 0, ODD_GID)
    (root / "setgid-dir" / "inside").write_bytes(b"in setgid dir")
    (root / "empty-dir").mkdir()
    (root / "deep" / "er" / "est").mkdir(parents=True)
    (root / "deep" / "er" / "est" / "leaf").write_bytes(os.urandom(70_000))
    (root / "name with spaces é ü 日本").write_bytes(b"unicode")
    (root / "back\\slash\nnewline -dash").write_bytes(b"odd chars")
    os.symlink("plain.txt", root / "link-to-plain")
    os.symlink("deep/er", root / "link-to-dir")
    os.symlink("does-not-exist", root / "dangling")
    os.symlink("../plain.txt", root / "deep" / "up-link")
    long_dir = root / ("l" * 150) / ("m" * 200)  # > 255 bytes: only a pax path can hold it
    long_dir.mkdir(parents=True)
    (long_dir / ("n" * 120)).write_bytes(b"long name")
    os.symlink(f"{'m' * 200}/{'n' * 120}", root / ("l" * 150) / "long-target-link")
    (root / "big-ids").write_bytes(b"ids beyond ustar's 7 octal digits")
    os.chown(root / "big-ids", 3_000_000, 3_000_001)
    (root / "hard-a").write_bytes(b"shared inode")
    os.link(root / "hard-a", root / "deep" / "hard-b")
    with open(root / "sparse.img", "wb") as fh:  # 64 MiB apparent, 2 small data regions
        fh.seek(8 * 1024 * 1024)
        fh.write(b"A" * 4096)
        fh.seek(64 * 1024 * 1024 - 10)
        fh.write(b"Z" * 10)
    if user_xattrs_supported(root):
        os.setxattr(root / "plain.txt", "user.color", b"blue")
        os.setxattr(root / "deep", "user.binary", b"\x00\xff\x01")
    os.utime(root / "plain.txt", ns=(ODD_MTIME_NS, ODD_MTIME_NS))
    os.utime(root / "link-to-plain", ns=(ODD_MTIME_NS, ODD_MTIME_NS + 7), follow_symlinks=False)
    os.utime(root / "empty-dir", ns=(ODD_MTIME_NS, ODD_MTIME_NS + 1))


# -- round trip --------------------------------------------------------------------------------------------


def test_round_trip_preserves_everything(tmp_path):
    src = tmp_path / "src"
    build_rich_tree(src)
    data, stats = capture(src)
    out = tmp_path / "out"
    ext = restore(data, out, stats)
    assert fingerprint(out) == fingerprint(src)
    assert ext.files == stats.files == len(fingerprint(src))
    assert ext.sha256 == stats.sha256 and ext.size == stats.size == len(data)
    assert ext.uncompressed <= stats.uncompressed
    assert (out / "sparse.img").stat().st_blocks * 512 < 1024 * 1024, "holes must stay holes"
    assert os.lstat(out / "owned").st_uid == ODD_UID and os.lstat(out / "owned").st_gid == ODD_GID
    assert stat.S_IMODE(os.lstat(out / "setgid-dir").st_mode) == 0o2775
    assert stat.S_IMODE(os.lstat(out / "secret.key").st_mode) == 0o600
    assert os.lstat(out / "plain.txt").st_mtime_ns == ODD_MTIME_NS
    assert os.path.samefile(out / "hard-a", out / "deep" / "hard-b")
    assert os.readlink(out / "link-to-plain") == "plain.txt"


def test_xattrs_survive(tmp_path):
    if not user_xattrs_supported(tmp_path):
        pytest.skip(f"the filesystem of {tmp_path} refuses user.* xattrs")
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    os.setxattr(src / "f", "user.big", os.urandom(3000))
    os.setxattr(src / "f", "user.empty", b"")
    subprocess.run(["setfacl", "-m", f"u:{ODD_UID}:r", str(src / "f")], check=False)
    subprocess.run(["setfacl", "-d", "-m", f"u:{ODD_UID}:rx", str(src)], check=False)  # default ACL on a dir
    data, stats = capture(src)
    restore(data, tmp_path / "out", stats)
    assert fingerprint(tmp_path / "out") == fingerprint(src)
    assert any(n == "user.big" for n, _ in _xattrs(str(tmp_path / "out" / "f")))


def _acl_tree(root: Path) -> bool:
    """A file with an ACL entry under `root`; False when this filesystem refuses POSIX ACLs."""
    root.mkdir()
    (root / "f").write_bytes(b"x")
    return subprocess.run(["setfacl", "-m", f"u:{ODD_UID}:r", str(root / "f")], capture_output=True).returncode == 0


def test_capture_counts_members_with_acls(tmp_path):
    plain = tmp_path / "plain"
    build_rich_tree(plain)
    assert capture(plain)[1].acls == 0
    if not _acl_tree(tmp_path / "acl"):
        pytest.skip(f"the filesystem of {tmp_path} refuses POSIX ACLs")
    assert capture(tmp_path / "acl")[1].acls == 1


def test_an_archive_with_acls_its_manifest_denies_is_refused(tmp_path):
    if not _acl_tree(tmp_path / "src"):
        pytest.skip(f"the filesystem of {tmp_path} refuses POSIX ACLs")
    data, stats = capture(tmp_path / "src")
    with pytest.raises(IntegrityError, match="carries ACLs its manifest does not list"):
        restore(data, tmp_path / "out", stats, acls=False)


def test_without_acls_files_do_not_inherit_the_destinations_default_acl(tmp_path):
    """acls=False drops tar's --acls, unless the destination would hand its default ACL down."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    data, stats = capture(src)
    dest = tmp_path / "out"
    dest.mkdir()
    if subprocess.run(["setfacl", "-d", "-m", f"u:{ODD_UID}:rwx", str(dest)], capture_output=True).returncode:
        pytest.skip(f"the filesystem of {tmp_path} refuses POSIX ACLs")
    restore(data, dest, stats, acls=False)
    assert not [n for n, _ in _xattrs(str(dest / "f")) if n.startswith("system.posix_acl")]
    assert fingerprint(dest) == fingerprint(src)


def test_sinks_receive_identical_bytes_and_hash_matches(tmp_path):
    src = tmp_path / "src"
    build_rich_tree(src)
    one = ListSink()
    with open(tmp_path / "obj", "wb") as fh:
        stats = write_archive(src, [one, fh])
    two = (tmp_path / "obj").read_bytes()
    assert one.data() == two
    assert hashlib.sha256(two).hexdigest() == stats.sha256
    assert stats.size == len(two) and stats.uncompressed > stats.size
    assert two[:4] == b"\x28\xb5\x2f\xfd", "a zstd frame"


def test_progress_reports_growing_totals(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "big").write_bytes(os.urandom(3 * 1024 * 1024))
    seen: list[int] = []
    _, stats = capture(src, progress=seen.append)
    assert seen == sorted(seen) and seen[-1] == stats.uncompressed


def test_fifo_and_devices_are_left_out(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    os.mkfifo(src / "pipe")
    (src / "kept").write_bytes(b"k")
    data, stats = capture(src)
    assert stats.skipped == ("./pipe (FIFO)",)
    restore(data, tmp_path / "out", stats)
    assert sorted(os.listdir(tmp_path / "out")) == ["kept"]


def test_symlink_restore_would_refuse_fails_the_capture(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    os.symlink("/etc/passwd", src / "abs-link")
    with pytest.raises(ArchiveError, match="abs-link"):
        capture(src)


def test_unreadable_file_is_an_error_naming_it(tmp_path):
    """Root reads everything, so tar runs without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH (setpriv) to get a
    genuine "Permission denied" on a mode-000 file owned by someone else."""
    if subprocess.run(["setpriv", "--version"], capture_output=True).returncode != 0:
        pytest.skip("setpriv (util-linux) is not available")
    src = tmp_path / "src"
    src.mkdir()
    (src / "fine").write_bytes(b"ok")
    (src / "locked").write_bytes(b"nope")
    os.chown(src / "locked", 1, 1)
    os.chmod(src / "locked", 0)
    code = (
        "import io, json, sys\n"
        "from migrator.archive import write_archive, ArchiveError\n"
        "try:\n"
        "    write_archive(sys.argv[1], [io.BytesIO()])\n"
        "    print(json.dumps({'ok': True}))\n"
        "except ArchiveError as e:\n"
        "    print(json.dumps({'ok': False, 'message': e.message, 'exit_code': e.exit_code}))\n"
    )
    proc = subprocess.run(["setpriv", "--bounding-set", "-dac_override,-dac_read_search", sys.executable, "-c",
                           code, str(src)], capture_output=True, text=True, cwd=REPO, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["ok"] is False
    assert "locked" in result["message"] and "Permission denied" in result["message"]
    assert result["exit_code"] == 1


def test_missing_member_in_list_is_fatal(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    with pytest.raises(ArchiveError, match="ghost"):
        capture(src, members=["ghost"])


def test_capture_walker_is_independent_of_chunking(tmp_path):
    """The walker must find member boundaries wherever tar's output is cut, and drop exactly the FIFOs."""
    src = tmp_path / "src"
    build_rich_tree(src)
    for i, size in enumerate((0, 1, 511, 512, 513, 1023, 10_000)):
        (src / f"size-{size}").write_bytes(os.urandom(size))
        os.mkfifo(src / f"fifo-{i}")
    raw = subprocess.run(tar_create_argv(src, False), capture_output=True, check=True).stdout

    def walk(sizes: list[int]) -> tuple[bytes, CaptureWalker]:
        walker, out, pos, k = CaptureWalker(), bytearray(), 0, 0
        while pos < len(raw):
            piece = raw[pos:pos + sizes[k % len(sizes)]]
            out += b"".join(bytes(seg) for seg in walker.feed(piece))
            pos, k = pos + len(piece), k + 1
        walker.finish()
        return bytes(out), walker

    ref, walker = walk([len(raw)])
    with tarfile.open(fileobj=io.BytesIO(ref)) as tf:
        names = [m.name for m in tf]
    assert len(walker.skipped) == 7 and not any("fifo" in n for n in names)
    assert walker.files == len(names) == len(fingerprint(src)) - 7
    for sizes in ([1], [7, 511], [512], [513, 100_000], [3, 1024, 5000]):
        assert walk(sizes)[0] == ref, sizes


def test_capture_walker_passes_a_stream_without_specials_untouched(tmp_path):
    src = tmp_path / "src"
    build_rich_tree(src)
    raw = subprocess.run(tar_create_argv(src, False), capture_output=True, check=True).stdout
    walker = CaptureWalker()
    assert b"".join(bytes(s) for s in walker.feed(raw)) == raw


# -- integrity ---------------------------------------------------------------------------------------------


@pytest.fixture()
def small_object(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(os.urandom(200_000))
    (src / "b").write_bytes(b"b" * 100_000)
    return capture(src)


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_one_flipped_byte_is_refused(tmp_path, small_object, where):
    data, stats = small_object
    pos = {"first": 0, "middle": len(data) // 2, "last": len(data) - 1}[where]
    bad = bytearray(data)
    bad[pos] ^= 0x01
    with pytest.raises(IntegrityError):
        extract_archive(io.BytesIO(bytes(bad)), tmp_path / "out", expected_sha256=stats.sha256,
                        expected_size=stats.size)


def test_truncated_object_is_refused(tmp_path, small_object):
    data, stats = small_object
    with pytest.raises(IntegrityError):
        extract_archive(io.BytesIO(data[:-1]), tmp_path / "out", expected_sha256=stats.sha256)


def test_wrong_hash_or_size_is_refused(tmp_path, small_object):
    data, stats = small_object
    with pytest.raises(IntegrityError, match="sha256"):
        extract_archive(io.BytesIO(data), tmp_path / "o1", expected_sha256="0" * 64)
    with pytest.raises(IntegrityError, match="bytes"):
        extract_archive(io.BytesIO(data), tmp_path / "o2", expected_sha256=stats.sha256, expected_size=stats.size + 1)


def test_decompression_bomb_guard(tmp_path, small_object):
    data, stats = small_object
    with pytest.raises(IntegrityError, match="expands beyond"):
        restore(data, tmp_path / "out", stats, max_uncompressed=stats.uncompressed // 2)
    restore(data, tmp_path / "ok", stats, max_uncompressed=stats.uncompressed)


def test_not_an_archive_is_refused(tmp_path):
    junk = os.urandom(5000)
    with pytest.raises(IntegrityError):
        extract_archive(io.BytesIO(junk), tmp_path / "out", expected_sha256=hashlib.sha256(junk).hexdigest())


def test_store_read_error_surfaces_as_itself(tmp_path, small_object):
    data, stats = small_object

    class Flaky(io.BytesIO):
        def read(self, n=-1):
            if self.tell() > 1000:
                raise ConnectionResetError("store went away")
            return super().read(min(n, 1000) if n and n > 0 else 1000)

    with pytest.raises(ConnectionResetError):
        extract_archive(Flaky(data), tmp_path / "out", expected_sha256=stats.sha256)


def test_failing_sink_stops_the_capture(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "big").write_bytes(os.urandom(4 * 1024 * 1024))

    class Full:
        def write(self, b):
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        write_archive(src, [Full()])


# -- encryption --------------------------------------------------------------------------------------------


@pytest.fixture()
def age_key(tmp_path):
    key = tmp_path / "age.key"
    subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
    public = subprocess.run(["age-keygen", "-y", str(key)], check=True, capture_output=True, text=True).stdout.strip()
    return key, public


def test_encrypted_round_trip(tmp_path, age_key):
    key, public = age_key
    src = tmp_path / "src"
    build_rich_tree(src)
    data, stats = capture(src, recipients=[public])
    assert data.startswith(b"age-encryption.org/v1")
    assert hashlib.sha256(data).hexdigest() == stats.sha256
    restore(data, tmp_path / "out", stats, identity_file=key, encrypted=True)
    assert fingerprint(tmp_path / "out") == fingerprint(src)


def test_encrypted_needs_the_right_identity(tmp_path, age_key):
    _, public = age_key
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"secret")
    data, stats = capture(src, recipients=[public])
    other = tmp_path / "other.key"
    subprocess.run(["age-keygen", "-o", str(other)], check=True, capture_output=True)
    with pytest.raises(IntegrityError, match="decrypt"):
        restore(data, tmp_path / "out", stats, identity_file=other, encrypted=True)
    assert not (tmp_path / "out" / "f").exists()
    with pytest.raises(UsageError):
        restore(data, tmp_path / "out2", stats, encrypted=True)
    with pytest.raises(IntegrityError):  # an age object read as plain zstd
        restore(data, tmp_path / "out3", stats)


def test_ssh_ed25519_recipient(tmp_path):
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    public = (tmp_path / "id_ed25519.pub").read_text().strip()
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"via ssh key")
    data, stats = capture(src, recipients=[public])
    restore(data, tmp_path / "out", stats, identity_file=key, encrypted=True)
    assert (tmp_path / "out" / "f").read_bytes() == b"via ssh key"


def test_bad_recipient_is_refused_before_anything_runs(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    with pytest.raises(ArchiveError, match="age recipient"):
        capture(src, recipients=["not-a-key"])


# -- live capture and cleanup ------------------------------------------------------------------------------


def test_file_changing_during_capture_is_a_warning_not_an_error(tmp_path):
    """GNU tar exits 1 ("file changed as we read it") while services write: expected in phase 1."""
    import threading

    src = tmp_path / "src"
    src.mkdir()
    (src / "growing").write_bytes(os.urandom(64 * 1024 * 1024))
    stop = threading.Event()

    def append() -> None:
        with open(src / "growing", "ab") as fh:
            while not stop.is_set():
                fh.write(b"x" * 4096)
                fh.flush()

    writer = threading.Thread(target=append)
    writer.start()
    try:
        _, stats = capture(src, level=1)
    finally:
        stop.set()
        writer.join()
    assert any("changed as we read it" in w for w in stats.warnings), stats.warnings


def _children_of_this_process() -> list[str]:
    me = str(os.getpid())
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me:  # ppid
            found.append(f"{pid} state {fields[0]}")
    return found


def test_errors_leave_no_child_process_and_no_thread(tmp_path, age_key):
    import threading

    key, public = age_key
    src = tmp_path / "src"
    src.mkdir()
    (src / "big").write_bytes(os.urandom(6 * 1024 * 1024))
    threads_before = set(threading.enumerate())
    # Session-wide lab servers (moto in a child process) may already run: only new children count.
    children_before = {entry.split()[0] for entry in _children_of_this_process()}

    class Broken:
        def write(self, b):
            raise OSError(errno.EIO, "sink failed")

    for recipients in ((), (public,)):
        with pytest.raises(OSError, match="sink failed"):
            write_archive(src, [Broken()], recipients=list(recipients))
    data, stats = capture(src, recipients=[public])
    other = tmp_path / "other.key"
    subprocess.run(["age-keygen", "-o", str(other)], check=True, capture_output=True)
    with pytest.raises(IntegrityError):
        restore(data, tmp_path / "o1", stats, identity_file=other, encrypted=True)
    with pytest.raises(IntegrityError):
        restore(data[: len(data) // 2], tmp_path / "o2", stats, identity_file=key, encrypted=True)
    assert [c for c in _children_of_this_process() if c.split()[0] not in children_before] == []
    assert set(threading.enumerate()) <= threads_before

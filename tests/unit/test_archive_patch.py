"""Block deltas (archive/patch.py): phase 1 digests what it archived, phase 2 sends only the changed blocks of
big files, restore applies them in place; anything else falls back to the whole file; hostile patch members
are refused and nothing outside dest is touched."""

from __future__ import annotations

import io
import os
import random
import stat
import subprocess
import tarfile

import pytest
import xxhash
import zstandard

from migrator.archive import TreeState, capture_phase1, capture_phase2, patch, scan
from migrator.archive.capture import tar_create_argv
from migrator.archive.patch import BLOCK_SIZE, EXTENT, PATCH_MEMBER
from migrator.archive.tarstream import CaptureWalker
from migrator.errors import IntegrityError
from tests.unit.test_archive import ListSink, build_rich_tree, fingerprint, restore, user_xattrs_supported
from tests.unit.test_archive_hostile import _extract, _object, _outside_state, _reg
from tests.unit.test_archive_twophase import _mutate, _not_racy

MIB = 1024 * 1024


def _rand(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


def _two_phases(tmp_path, build, change, *, racy: bool = False):
    """Build src, phase 1, change it, phase 2; restore both into out. Returns (stats2, ext2, src, out)."""
    src = tmp_path / "src"
    src.mkdir()
    build(src)
    sink1 = ListSink()
    stats1, state = capture_phase1(src, [sink1])
    change(src)
    sink2 = ListSink()
    stats2, _ = capture_phase2(src, [sink2], state if racy else _not_racy(state))
    out = tmp_path / "out"
    restore(sink1.data(), out, stats1)
    ext2 = restore(sink2.data(), out, stats2)
    assert fingerprint(out) == fingerprint(src)
    return stats2, ext2, sink2.data()


def _db(src, size: int = 8 * MIB) -> None:
    (src / "db").write_bytes(_rand(size))
    (src / "small").write_bytes(b"small")


def _tar_members(obj: bytes) -> list[tarfile.TarInfo]:
    plain = zstandard.ZstdDecompressor().decompress(obj, max_output_size=1 << 30)
    with tarfile.open(fileobj=io.BytesIO(plain), mode="r:", encoding="utf-8", errors="surrogateescape") as tf:
        return tf.getmembers()


# -- phase 1: digests -------------------------------------------------------------------------------------


def test_phase1_digests_the_archived_bytes_of_big_plain_files_only(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    data = _rand(5 * MIB + 123)
    (src / "big").write_bytes(data)
    (src / "one-block").write_bytes(_rand(MIB))
    (src / "sub").mkdir()
    (src / "sub" / "big2").write_bytes(_rand(3 * MIB, seed=2))
    with open(src / "sparse", "wb") as fh:
        fh.seek(16 * MIB)
        fh.write(b"end")
    _, state = capture_phase1(src, [ListSink()])
    assert set(state.blocks) == {"big", "sub/big2"}
    size, digests = state.blocks["big"]
    assert size == len(data)
    assert digests == b"".join(xxhash.xxh3_128_digest(data[i:i + BLOCK_SIZE]) for i in range(0, size, BLOCK_SIZE))
    state.save(tmp_path / "state")
    assert TreeState.load(tmp_path / "state").blocks == state.blocks


def test_walker_digests_are_independent_of_chunking(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    data = _rand(3 * MIB + 7)
    (src / "f").write_bytes(data)
    stream = subprocess.run(tar_create_argv(src, False), capture_output=True, check=True).stdout
    expect = b"".join(xxhash.xxh3_128_digest(data[i:i + BLOCK_SIZE]) for i in range(0, len(data), BLOCK_SIZE))
    for step in (1 << 20, 512, 1000, 4099, 777_777):
        got = {}
        walker = CaptureWalker(on_data=lambda path, size, got=got: patch.BlockDigester(
            size, lambda n, d, path=path: got.__setitem__(path, (n, d))))
        for i in range(0, len(stream), step):
            walker.feed(stream[i:i + step])
        walker.finish()
        assert got == {"f": (len(data), expect)}, step


# -- phase 2: what becomes a patch, and the round trip -----------------------------------------------------


def test_append_sends_only_the_new_blocks(tmp_path):
    def change(src):
        with open(src / "db", "ab") as fh:
            fh.write(_rand(MIB + 500, seed=3))

    stats2, ext2, obj = _two_phases(tmp_path, _db, change)
    assert stats2.patched == 1 and ext2.patched == 1
    assert stats2.uncompressed < 2 * MIB + 64 * 1024  # the appended 1 MiB + 500 B, not the whole 9 MiB
    names = [m.name for m in _tar_members(obj)]
    assert names[0] == PATCH_MEMBER and "db" not in names


def test_in_place_change_in_the_middle(tmp_path):
    def change(src):
        with open(src / "db", "r+b") as fh:
            fh.seek(3 * MIB + 10)
            fh.write(b"changed in place")

    stats2, ext2, _ = _two_phases(tmp_path, _db, change)
    assert stats2.patched == 1 and stats2.uncompressed < MIB + 64 * 1024


def test_truncate(tmp_path):
    def change(src):
        os.truncate(src / "db", 5 * MIB + 300)

    stats2, ext2, _ = _two_phases(tmp_path, _db, change)
    assert stats2.patched == 1 and stats2.uncompressed < 64 * 1024  # one 300-byte block, then truncate


def test_grow_by_writing_past_the_end(tmp_path):
    def change(src):
        with open(src / "db", "r+b") as fh:
            fh.seek(8 * MIB - 100)
            fh.write(_rand(2 * MIB, seed=4))

    stats2, ext2, _ = _two_phases(tmp_path, _db, change)
    assert stats2.patched == 1 and stats2.uncompressed < 3 * MIB + 64 * 1024


def test_mode_owner_and_ns_mtime_follow_the_patch(tmp_path):
    def change(src):
        with open(src / "db", "ab") as fh:
            fh.write(b"tail")
        os.chown(src / "db", 1234, 5678)
        os.chmod(src / "db", 0o4750)
        os.utime(src / "db", ns=(1_600_000_000_123_456_789, 1_600_000_000_987_654_321))

    stats2, ext2, _ = _two_phases(tmp_path, _db, change)
    out_db = tmp_path / "out" / "db"
    st = os.stat(out_db)
    assert stats2.patched == 1
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns) == (0o4750, 1234, 5678,
                                                                                 1_600_000_000_987_654_321)


def test_racy_but_unchanged_file_is_a_metadata_only_patch(tmp_path):
    stats2, ext2, _ = _two_phases(tmp_path, _db, lambda src: None, racy=True)
    assert stats2.patched == 1 and stats2.uncompressed < 64 * 1024


def test_patches_with_every_other_kind_of_change(tmp_path):
    """Delete list, patch members and tar's members in one phase 2: still exactly the phase-2 tree."""
    src = tmp_path / "src"
    build_rich_tree(src)
    (src / "deep" / "db").write_bytes(_rand(6 * MIB))
    (src / "db-gone").write_bytes(_rand(3 * MIB))
    sink1 = ListSink()
    stats1, state = capture_phase1(src, [sink1])
    _mutate(src)
    with open(src / "deep" / "db", "r+b") as fh:
        fh.seek(2 * MIB)
        fh.write(b"x" * 100)
    os.unlink(src / "db-gone")
    sink2 = ListSink()
    stats2, _ = capture_phase2(src, [sink2], _not_racy(state))
    assert stats2.patched == 1
    out = tmp_path / "out"
    restore(sink1.data(), out, stats1)
    ext2 = restore(sink2.data(), out, stats2)
    assert ext2.patched == 1 and ext2.deleted > 0
    assert fingerprint(out) == fingerprint(src)


def test_encrypted_phase2_with_a_patch(tmp_path):
    key = tmp_path / "age.key"
    subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
    public = subprocess.run(["age-keygen", "-y", str(key)], check=True, capture_output=True, text=True).stdout.strip()
    src = tmp_path / "src"
    src.mkdir()
    _db(src)
    sink1 = ListSink()
    stats1, state = capture_phase1(src, [sink1], recipients=[public])
    with open(src / "db", "ab") as fh:
        fh.write(b"tail")
    sink2 = ListSink()
    stats2, _ = capture_phase2(src, [sink2], _not_racy(state), recipients=[public])
    assert stats2.patched == 1
    out = tmp_path / "out"
    restore(sink1.data(), out, stats1, identity_file=key, encrypted=True)
    assert restore(sink2.data(), out, stats2, identity_file=key, encrypted=True).patched == 1
    assert fingerprint(out) == fingerprint(src)


def _whole(tmp_path, build, change):
    stats2, ext2, obj = _two_phases(tmp_path, build, change)
    assert stats2.patched == 0 and ext2.patched == 0
    assert "db" in [m.name for m in _tar_members(obj)]


def test_replaced_by_a_new_inode_is_patched_when_the_old_one_had_no_other_name(tmp_path):
    # A database rewritten by rename, or a tree copied to another VSN (move): restore holds the old file
    # alone at that path, so its changed blocks are all that must travel.
    def change(src):
        data = (src / "db").read_bytes() + b"appended"
        (src / "db.tmp").write_bytes(data)
        os.rename(src / "db.tmp", src / "db")

    stats2, ext2, obj = _two_phases(tmp_path, _db, change)
    assert stats2.patched == 1 and ext2.patched == 1
    assert "db" not in [m.name for m in _tar_members(obj)]
    assert len(obj) < MIB  # one block, not the 8 MiB file


def test_replaced_by_a_new_inode_goes_whole_while_the_old_one_keeps_a_hard_link(tmp_path):
    # Patching the restored "db" in place would also write through "db.link", which must keep the old bytes.
    def build(src):
        _db(src)
        os.link(src / "db", src / "db.link")

    def change(src):
        data = (src / "db").read_bytes()[:-10] + b"0123456789"
        (src / "db.tmp").write_bytes(data)
        os.rename(src / "db.tmp", src / "db")

    stats2, _ext2, obj = _two_phases(tmp_path, build, change)
    # "db.link" (same inode, one name less) goes as an empty patch; the new "db" goes whole.
    assert stats2.patched == 1 and "db" in [m.name for m in _tar_members(obj)]


def test_file_with_xattrs_goes_whole(tmp_path):
    if not user_xattrs_supported(tmp_path):
        pytest.skip("no user xattrs on this filesystem")

    def change(src):
        os.setxattr(src / "db", "user.tag", b"v2")
        with open(src / "db", "ab") as fh:
            fh.write(b"tail")

    _whole(tmp_path, _db, change)


def test_file_that_became_sparse_goes_whole(tmp_path):
    _whole(tmp_path, _db, lambda src: os.truncate(src / "db", 40 * MIB))  # the extension is a hole


def test_sparse_file_is_never_digested(tmp_path):
    def build(src):
        with open(src / "db", "wb") as fh:
            fh.write(_rand(2 * MIB))
            fh.seek(32 * MIB)
            fh.write(b"end")

    def change(src):
        with open(src / "db", "r+b") as fh:
            fh.write(b"start")

    _whole(tmp_path, build, change)


def test_hard_linked_file_goes_whole(tmp_path):
    def build(src):
        _db(src)
        os.link(src / "db", src / "db-link")

    def change(src):
        with open(src / "db", "ab") as fh:
            fh.write(b"tail")

    _whole(tmp_path, build, change)


def test_patched_file_whose_phase1_hard_link_was_replaced(tmp_path):
    """Phase 1 restored a and b as one inode; one name was since replaced by a new file and the other appended
    to: the patch writes through the stale link in dest, and tar then replaces the other name."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(_rand(4 * MIB))
    os.link(src / "a", src / "b")
    sink1 = ListSink()
    stats1, state = capture_phase1(src, [sink1])
    [data_name] = state.blocks  # tar archived the data under the name it met first, the other as a link
    other = "b" if data_name == "a" else "a"
    (src / "new").write_bytes(b"its own file now")
    os.rename(src / "new", src / other)
    with open(src / data_name, "ab") as fh:
        fh.write(b"tail")
    sink2 = ListSink()
    stats2, _ = capture_phase2(src, [sink2], _not_racy(state))
    assert stats2.patched == 1
    out = tmp_path / "out"
    restore(sink1.data(), out, stats1)
    restore(sink2.data(), out, stats2)
    assert fingerprint(out) == fingerprint(src)


def test_mostly_rewritten_file_goes_whole(tmp_path):
    def change(src):
        with open(src / "db", "r+b") as fh:
            fh.write(_rand(5 * MIB, seed=9))

    _whole(tmp_path, _db, change)


def test_file_changed_after_planning_fails_the_capture(tmp_path):
    """Writers are stopped in phase 2; if something still writes, the capture fails rather than lie."""
    src = tmp_path / "src"
    src.mkdir()
    _db(src)
    _, state = capture_phase1(src, [ListSink()])
    with open(src / "db", "ab") as fh:
        fh.write(b"tail")
    before, after = _not_racy(state), scan(src)
    patches, whole = patch.plan(src, before, after, ["db"])
    assert [p.path for p in patches] == ["db"] and whole == []
    with open(src / "db", "ab") as fh:
        fh.write(b"more")
    with pytest.raises(Exception, match="changed while its writers were stopped"):
        list(patch.members(src, patches))


# -- restore: hostile patch members ------------------------------------------------------------------------


def _patch(path: str, extents=((0, b"P"),), *, size: int = 3 * MIB, base: int = 3 * MIB, data: bytes | None = None,
           **fields) -> tuple[tarfile.TarInfo, bytes]:
    body = b"".join(EXTENT.pack(off, len(chunk)) + chunk for off, chunk in extents) if data is None else data
    pax = {patch.PATCH_MARK: "1", patch.PATH_KEY: path, patch.SIZE_KEY: str(size), patch.BASE_KEY: str(base),
           patch.MODE_KEY: "420", patch.UID_KEY: "0", patch.GID_KEY: "0", patch.MTIME_KEY: "1700000000000000001"}
    pax.update({k: str(v) for k, v in fields.items()})
    return _reg(PATCH_MEMBER, body, **pax)


@pytest.fixture()
def arena(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "sentinel").write_bytes(b"S" * (3 * MIB))
    dest = tmp_path / "dest"
    (dest / "d").mkdir(parents=True)
    (dest / "f").write_bytes(b"F" * (3 * MIB))
    (dest / "d" / "g").write_bytes(b"G" * (3 * MIB))
    os.symlink("../outside", dest / "to-outside")
    os.symlink("../outside/sentinel", dest / "sym-file")
    os.mkfifo(dest / "fifo")
    return tmp_path, outside, dest


HOSTILE = {
    "path through a symlink": [_patch("to-outside/sentinel")],
    "target is a symlink": [_patch("sym-file")],
    "target missing": [_patch("missing")],
    "parent missing": [_patch("nodir/f")],
    "target is a directory": [_patch("d")],
    "target is a FIFO": [_patch("fifo")],
    "the root": [_patch(".")],
    "dot-dot": [_patch("../outside/sentinel")],
    "dot-dot inside": [_patch("d/../../outside/sentinel")],
    "absolute": [_patch("/etc/passwd")],
    "offset beyond the new size": [_patch("f", [(3 * MIB - 1, b"xx")])],
    "new size beyond off_t": [_patch("f", size=1 << 63)],
    "base size is not what is there": [_patch("f", base=MIB)],
    "data shorter than its extent": [_patch("f", data=EXTENT.pack(0, 1000) + b"short")],
    "data ends inside an extent header": [_patch("f", data=EXTENT.pack(0, 1) + b"x" + b"\0" * 7)],
    "empty extent": [_patch("f", [(0, b"")])],
    "overlapping extents": [_patch("f", [(0, b"abcd"), (2, b"xy")])],
    "mode beyond 07777": [_patch("f", **{patch.MODE_KEY: 0o170777})],
    "negative owner": [_patch("f", **{patch.UID_KEY: -1})],
    "not a number": [_patch("f", **{patch.GID_KEY: "0x10"})],
    "unknown format version": [_patch("f", **{patch.PATCH_MARK: "2"})],
    "patched twice": [_patch("f"), _patch("f")],
    "patched path also a later tar member": [_patch("f"), _reg("f", b"whole")],
    "patched path also a later tar member (other spelling)": [_patch("d/g"), _reg("./d//g", b"whole")],
    "patch after an ordinary member": [_reg("x", b"x"), _patch("f")],
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_patch_member_is_refused(arena, case):
    tmp_path, outside, dest = arena
    before = _outside_state(tmp_path, dest)
    with pytest.raises(IntegrityError) as info:
        _extract(_object(HOSTILE[case]), dest)
    assert info.value.exit_code == 6
    assert info.value.message.startswith(("refusing patch member", "refusing archive member")), info.value.message
    assert _outside_state(tmp_path, dest) == before, "something appeared or changed outside dest"
    assert (outside / "sentinel").read_bytes() == b"S" * (3 * MIB)


def test_valid_patch_member_is_applied(arena):
    tmp_path, outside, dest = arena
    obj = _object([
        _patch("f", [(0, b"head"), (MIB, b"mid"), (3 * MIB, b"grown")], size=3 * MIB + 5, **{patch.MODE_KEY: 0o640}),
        _patch("d/g", [], size=10),  # truncate only
        _reg(PATCH_MEMBER, b"an ordinary user file with that name"),  # no mark: extracted as data
    ])
    stats = _extract(obj, dest)
    assert stats.patched == 2 and stats.files == 1
    want = bytearray(b"F" * (3 * MIB))
    want[0:4] = b"head"
    want[MIB:MIB + 3] = b"mid"
    want += b"grown"
    assert (dest / "f").read_bytes() == want
    st = os.stat(dest / "f")
    assert stat.S_IMODE(st.st_mode) == 0o640 and st.st_mtime_ns == 1_700_000_000_000_000_001
    assert (dest / "d" / "g").read_bytes() == b"G" * 10
    assert (dest / PATCH_MEMBER).read_bytes() == b"an ordinary user file with that name"


def test_phase2_with_patches_is_still_an_ordinary_tar(tmp_path):
    """GNU tar can still read a phase-2 object: patch members are plain regular members with vendor keywords."""
    src = tmp_path / "src"
    src.mkdir()
    _db(src)
    sink1 = ListSink()
    _, state = capture_phase1(src, [sink1])
    with open(src / "db", "ab") as fh:
        fh.write(b"tail")
    sink2 = ListSink()
    capture_phase2(src, [sink2], _not_racy(state))
    plain = zstandard.ZstdDecompressor().decompress(sink2.data(), max_output_size=1 << 30)
    listing = subprocess.run(["tar", "-t", "--warning=no-unknown-keyword"], input=plain, capture_output=True,
                             check=True).stdout.decode().split("\n")
    assert listing[0] == PATCH_MEMBER


def test_a_big_file_is_hashed_in_parallel_slices_and_every_changed_block_is_found(tmp_path):
    """_changed_extents splits a file over the CPUs: changes at both ends of every slice are found, merged."""
    blocks = 40
    data = bytearray(os.urandom(blocks * patch.BLOCK_SIZE))
    digests = b"".join(patch.DIGEST(data[i * patch.BLOCK_SIZE:(i + 1) * patch.BLOCK_SIZE]).digest()
                       for i in range(blocks))
    changed = {0, 7, 8, 19, 20, 21, 39}
    for i in changed:
        data[i * patch.BLOCK_SIZE + 5] ^= 0xFF
    data += b"appended"
    path = tmp_path / "f"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        extents = patch._changed_extents(fd, len(data), digests)
    finally:
        os.close(fd)
    B = patch.BLOCK_SIZE
    assert extents == [(0, B), (7 * B, 2 * B), (19 * B, 3 * B), (39 * B, B + len(b"appended"))]

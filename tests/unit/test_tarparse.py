"""migrator.archive.tarparse (restore's own tar parser) and emit's hand-built headers, against real GNU tar
and Python's tarfile as references; plus the fresh-destination mode of policy.MemberGuard."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from migrator.archive import emit, policy
from migrator.archive.capture import tar_create_argv
from migrator.archive.policy import DIR, FILE, LINK, MemberGuard, Refused
from migrator.archive.tarparse import BLOCK, CorruptTar, TarParser, UnsupportedTar, pax_records
from tests.unit.test_archive import user_xattrs_supported

LONG = "n" * 150


def _chunked(data: bytes, size: int):
    pieces = iter([data[i:i + size] for i in range(0, len(data), size)])
    return lambda: next(pieces, b"")


def parse_all(data: bytes, chunk: int = 1 << 20) -> list[tuple]:
    """(name, type, mode, uid, gid, mtime, size, linkname, sparse, data) per member, data read in pieces."""
    parser = TarParser(_chunked(data, chunk))
    out = []
    while (m := parser.next()) is not None:
        body = b"".join(bytes(p) for p in parser.pieces(m.stored)) if m.type == b"0" else b""
        out.append((m.name, m.type, m.mode, m.uid, m.gid, m.mtime, m.size, m.linkname, m.sparse, body))
    return out


@pytest.fixture(scope="module")
def gnu_stream(tmp_path_factory) -> bytes:
    """What capture's GNU tar writes for a tree with every kind of member restore accepts."""
    root = tmp_path_factory.mktemp("tree")
    (root / "d").mkdir()
    (root / "d" / "a").write_bytes(b"hello")
    os.link(root / "d" / "a", root / "d" / "hard")
    os.symlink("a", root / "d" / "sym")
    (root / "d" / LONG).mkdir()
    (root / "d" / LONG / LONG).write_bytes(b"z" * 1000)
    os.symlink(f"{LONG}/{LONG}", root / "d" / "longlink")
    (root / os.fsdecode(b"bad\xffname")).write_bytes(b"")
    (root / "empty").mkdir()
    with open(root / "sparse", "wb") as f:
        f.truncate(8 * 1024 * 1024)
        f.seek(3 * 1024 * 1024)
        f.write(b"x" * 5000)
    if user_xattrs_supported(root):
        os.setxattr(root / "d" / "a", "user.bin", b"\x00\n\xff")
    return subprocess.run(tar_create_argv(root, False), check=True, capture_output=True).stdout


@pytest.mark.parametrize("chunk", [1, 511, 512, 513, 4096, 1 << 20])
def test_gnu_tar_stream_parses_like_tarfile(gnu_stream, chunk):
    ours = parse_all(gnu_stream, chunk)
    with tarfile.open(fileobj=io.BytesIO(gnu_stream), encoding="utf-8", errors="surrogateescape") as tf:
        ref = []
        for m in tf:
            body = b""
            if m.isreg():
                f = tf.extractfile(m)
                body = b"".join(f.read(n) if f.seek(o) == o else b"" for o, n in m.sparse) if m.sparse else f.read()
            ref.append((m.name, m.type.replace(b"\0", b"0"), m.mode, m.uid, m.gid, m.mtime, m.size, m.linkname,
                        [tuple(x) for x in m.sparse] if m.sparse else None, body))
    assert [(r[0].rstrip("/"), *r[1:]) for r in ours] == ref  # tarfile drops a directory's trailing slash
    names = [r[0] for r in ours]
    assert f"./d/{LONG}/{LONG}" in names and os.fsdecode(b"./bad\xffname") in names
    sparse = next(r for r in ours if r[0] == "./sparse")
    assert sparse[6] == 8 * 1024 * 1024 and sparse[8] and sum(n for _, n in sparse[8]) == len(sparse[9])


def test_pax_records_keep_binary_values_with_newlines():
    assert pax_records(b"22 SCHILY.xattr.a=\x00\n\xff\n14 path=a/b/c\n") == {b"SCHILY.xattr.a": b"\x00\n\xff",
                                                                          b"path": b"a/b/c"}
    for bad in (b"99 path=x\n", b"5 path=x\n", b"0 path=x\n", b"12 pathxyz12\n"):
        with pytest.raises(ValueError):
            pax_records(bad)


def _pax_tar(members, **kwargs) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", **kwargs) as tf:
        for ti, data in members:
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _reg(name: str, data: bytes = b"x", **pax) -> tuple[tarfile.TarInfo, bytes]:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    ti.pax_headers = dict(pax)
    return ti, data


def _expect(exc_type, data: bytes, match: str):
    with pytest.raises(exc_type, match=match):
        parse_all(data)


def test_unsupported_headers_are_refused_not_guessed():
    glob = _pax_tar([_reg("a")], format=tarfile.PAX_FORMAT, pax_headers={"comment": "global"})
    _expect(UnsupportedTar, glob, "global pax header")
    gnu_long = _pax_tar([_reg("x" * 200)], format=tarfile.GNU_FORMAT)
    _expect(CorruptTar, gnu_long, "not a ustar header")  # old GNU magic: not the POSIX format we accept
    two = _pax_tar([_reg("a", path="a")], format=tarfile.PAX_FORMAT)
    size = 2 * BLOCK  # the x header block + one block of records
    _expect(UnsupportedTar, two[:size] + two, "two pax headers")
    old_sparse = _pax_tar([_reg("s", **{"GNU.sparse.map": "0,1", "GNU.sparse.size": "1"})], format=tarfile.PAX_FORMAT)
    _expect(UnsupportedTar, old_sparse, "sparse format")
    fifo = tarfile.TarInfo("weird")
    fifo.type = b"A"
    _expect(UnsupportedTar, _pax_tar([(fifo, None)], format=tarfile.PAX_FORMAT), "member type")


def _with_checksum(block: bytearray) -> bytes:
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def test_directory_with_data_is_refused():
    tar = bytearray(_pax_tar([_reg("d", b"")], format=tarfile.USTAR_FORMAT))
    head = bytearray(tar[:BLOCK])
    head[156:157] = b"5"
    head[124:136] = b"%011o\0" % BLOCK
    data = _with_checksum(head) + bytes(BLOCK) + bytes(2 * BLOCK)
    _expect(UnsupportedTar, data, "with 512 bytes of data")


@pytest.mark.parametrize("damage", ["checksum", "truncated data", "truncated header", "no end marker",
                                    "one zero block", "junk after end", "bad pax record", "bad number",
                                    "bad pax mtime", "sparse map past data"])
def test_damaged_streams_are_corrupt(damage):
    tar = _pax_tar([_reg("a", b"a" * 600), _reg("b", b"b", mtime="1.5")], format=tarfile.PAX_FORMAT)
    if damage == "checksum":
        tar = tar[:5] + b"Z" + tar[6:]
    elif damage == "truncated data":
        tar = tar[:BLOCK + 100]
    elif damage == "truncated header":
        tar = tar[:BLOCK + 2 * BLOCK + 100]
    elif damage == "no end marker":
        tar = _pax_tar([_reg("a", b"a")], format=tarfile.USTAR_FORMAT)[:2 * BLOCK]
    elif damage == "one zero block":
        tar = _pax_tar([_reg("a", b"a")], format=tarfile.USTAR_FORMAT)[:3 * BLOCK]
    elif damage == "junk after end":
        tar += b"junk".ljust(BLOCK, b"\0")
    elif damage == "bad pax record":
        tar = _pax_tar([_reg("b", b"b", comment="hello")], format=tarfile.PAX_FORMAT)
        head = bytearray(tar[:BLOCK])
        tar = tar.replace(b" comment=hello\n", b" comment=hello!", 1)
        tar = _with_checksum(head) + tar[BLOCK:]
    elif damage == "bad number":
        head = bytearray(tar[:BLOCK])
        head[108:116] = b"9999999\0"
        tar = _with_checksum(head) + tar[BLOCK:]
    elif damage == "bad pax mtime":
        tar = _pax_tar([_reg("b", b"b", mtime="inf")], format=tarfile.PAX_FORMAT)
    else:
        tar = _pax_tar([_reg("s", b"1\n0\n9999\n".ljust(BLOCK, b"\0"), **{
            "GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "s",
            "GNU.sparse.realsize": "9999"})], format=tarfile.PAX_FORMAT)
    with pytest.raises((CorruptTar, UnsupportedTar)) as info:
        parse_all(tar)
    expected = {"checksum": "bad checksum", "truncated data": "ends inside a member",
                "truncated header": "ends inside a header", "no end marker": "without its end-of-archive",
                "one zero block": "without its end-of-archive", "junk after end": "after its end",
                "bad pax record": "pax header", "bad number": "damaged header", "bad pax mtime": "mtime",
                "sparse map past data": "sparse map"}[damage]
    assert expected in str(info.value)


def test_emitted_headers_read_back_identically_by_tarfile_and_by_us():
    long_link = "l" * 120
    cases = [
        dict(path=b"plain", mode=0o644, uid=0, gid=0, size=3, mtime=1_600_000_000.5, typeflag=emit.REGULAR),
        dict(path=("d/" + LONG).encode(), mode=0o2775, uid=8**7, gid=70000, size=0, mtime=-5.0,
             typeflag=emit.DIRECTORY),
        dict(path=b"s", mode=0o777, uid=1, gid=2, size=0, mtime=7.0, typeflag=emit.SYMLINK,
             linkpath=long_link.encode()),
        dict(path=b"\xffodd", mode=0o600, uid=1, gid=2, size=0, mtime=1.0, typeflag=emit.REGULAR,
             pax={b"mtime": b"1.123456789", b"SCHILY.xattr.user.x": b"\x00\n"}),
    ]
    stream = b""
    for c in cases:
        stream += emit.member_header(**c) + (b"abc" + bytes(BLOCK - 3) if c["size"] else b"")
    stream += bytes(2 * BLOCK)
    ours = parse_all(stream)
    with tarfile.open(fileobj=io.BytesIO(stream), encoding="utf-8", errors="surrogateescape") as tf:
        ref = tf.getmembers()
    assert len(ours) == len(ref) == len(cases)
    for c, o, r in zip(cases, ours, ref, strict=True):
        name = c["path"].decode("utf-8", "surrogateescape")
        assert o[0] == r.name == name
        assert o[2] == r.mode == c["mode"] and o[3] == r.uid == c["uid"] and o[4] == r.gid == c["gid"]
        assert o[6] == r.size == c["size"]
        assert o[7] == r.linkname == c.get("linkpath", b"").decode()
        expected_mtime = float(c.get("pax", {}).get(b"mtime", c["mtime"]))
        assert o[5] == r.mtime == expected_mtime
    assert ref[3].pax_headers["SCHILY.xattr.user.x"] == "\x00\n"


def test_fresh_guard_never_looks_at_the_disk(tmp_path, monkeypatch):
    def no_lstat(path):
        raise AssertionError(f"lstat({path}) in fresh mode")

    monkeypatch.setattr(policy.os, "lstat", no_lstat)
    guard = MemberGuard(tmp_path, fresh=True)
    guard.check(("a",), DIR)
    guard.check(("a", "b", "c"), FILE)
    guard.check(("a", "s"), LINK, symlink_target="b")
    guard.check(("h",), FILE, link_parts=("a", "b", "c"))
    for parts, kind, kw in [(("a", "s", "x"), FILE, {}), (("a",), FILE, {}), (("a", "b", "c", "d"), FILE, {}),
                            (("a", "s"), DIR, {}), (("h2",), FILE, {"link_parts": ("a", "s")})]:
        with pytest.raises(Refused):
            guard.check(parts, kind, **kw)


def test_guard_follows_a_path_through_file_symlink_file(tmp_path):
    """Regular files live in the hash set, symlinks in the dict: whichever came last decides."""
    guard = MemberGuard(tmp_path, fresh=True)
    guard.check(("p",), FILE)
    guard.check(("p",), LINK, symlink_target="q")
    with pytest.raises(Refused, match="not an earlier regular member"):
        guard.check(("h",), FILE, link_parts=("p",))  # p is a symlink now
    with pytest.raises(Refused, match="symlink"):
        guard.check(("p", "x"), FILE)
    guard.check(("p",), FILE)  # tar replaces the symlink with a file again
    guard.check(("h",), FILE, link_parts=("p",))
    with pytest.raises(Refused, match="non-directory"):
        guard.check(("p", "x"), FILE)
    with pytest.raises(Refused, match="into a directory"):
        guard.check(("h",), DIR)  # a hard link is a regular file too


def test_guard_replaces_an_on_disk_symlink_with_a_file(tmp_path):
    os.symlink("elsewhere", tmp_path / "s")
    guard = MemberGuard(tmp_path)
    guard.check(("s",), FILE)
    guard.check(("h",), FILE, link_parts=("s",))


def test_path_hash_set_membership_across_growth():
    paths = [f"files/d{i % 97}/f-{i}.txt" for i in range(50_000)]
    seen = policy.PathHashSet()
    for i, path in enumerate(paths):
        seen.add(path)
        if i % 9973 == 0:  # earlier members stay found while the table grows
            assert all(p in seen for p in paths[:i + 1:101])
    seen.add(paths[0])  # adding again changes nothing
    assert len(seen) == len(paths)
    assert all(p in seen for p in paths)
    assert not any(f"files/d{i % 97}/g-{i}.txt" in seen for i in range(50_000))


def test_guard_memory_per_file_is_a_few_bytes():
    """Restore memory stays flat in the number of files: the guard keeps ~16-32 bytes per regular file
    (a dict of path strings, its former model, cost ~115)."""
    import tracemalloc

    n = 100_000
    paths = [("files", f"d{i // 2000:02d}", f"e{(i // 100) % 20:02d}", f"f-{i:06d}.txt") for i in range(n)]
    tracemalloc.start()
    try:
        guard = MemberGuard("/nonexistent", fresh=True)
        for parts in paths:
            guard.check(parts, FILE)
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert held / n <= 40, f"{held / n:.0f} bytes per file"


def test_guard_on_a_non_empty_dest_still_looks_at_the_disk(tmp_path):
    os.symlink("/", tmp_path / "pre")
    (tmp_path / "file").write_bytes(b"")
    guard = MemberGuard(tmp_path)
    with pytest.raises(Refused, match="symlink"):
        guard.check(("pre", "x"), FILE)
    with pytest.raises(Refused, match="non-directory"):
        guard.check(("file", "x"), FILE)
    guard.check(("new", "deeper", "x"), FILE)


def test_extraction_decides_freshness_from_the_destination(tmp_path, monkeypatch):
    from migrator.archive import extract

    seen = []
    real = extract.MemberGuard

    def spy(dest, *, fresh=False):
        seen.append(fresh)
        return real(dest, fresh=fresh)

    monkeypatch.setattr(extract, "MemberGuard", spy)
    import hashlib

    import zstandard

    obj = zstandard.ZstdCompressor().compress(_pax_tar([_reg("f", b"f")], format=tarfile.PAX_FORMAT))

    def run(dest: Path):
        extract.extract_archive(io.BytesIO(obj), dest, expected_sha256=hashlib.sha256(obj).hexdigest())

    run(tmp_path / "new")
    run(tmp_path / "new")
    assert seen == [True, False]


def test_pre_posix_directory_and_contiguous_file_types():
    tar = _pax_tar([_reg("d/", b""), _reg("c", b"data")], format=tarfile.USTAR_FORMAT)
    first, second = bytearray(tar[:BLOCK]), bytearray(tar[BLOCK:2 * BLOCK])
    first[156:157] = b"\0"
    second[156:157] = b"7"
    tar = _with_checksum(first) + _with_checksum(second) + tar[2 * BLOCK:]
    members = parse_all(tar)
    assert [(m[0], m[1], m[9]) for m in members] == [("d/", b"5", b""), ("c", b"0", b"data")]

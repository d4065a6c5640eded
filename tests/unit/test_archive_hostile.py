"""Hostile archives (built with Python's tarfile) are refused, and nothing ever appears outside dest."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest
import zstandard

from migrator.archive import extract_archive
from migrator.archive.tarstream import DELETED_MARK, DELETED_MEMBER
from migrator.errors import IntegrityError


def _reg(name: str, data: bytes = b"evil", **pax) -> tuple[tarfile.TarInfo, bytes]:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    ti.pax_headers = dict(pax)
    return ti, data


def _typed(name: str, type_: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    ti = tarfile.TarInfo(name)
    ti.type = type_
    ti.linkname = linkname
    if type_ == tarfile.DIRTYPE:
        ti.mode = 0o755
    return ti, None


def _delete_list(*paths: str) -> tuple[tarfile.TarInfo, bytes]:
    return _reg(DELETED_MEMBER, b"".join(p.encode() + b"\0" for p in paths), **{DELETED_MARK: "1"})


def _object(members) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for ti, data in members:
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    return zstandard.ZstdCompressor().compress(buf.getvalue())


def _extract(data: bytes, dest):
    return extract_archive(io.BytesIO(data), dest, expected_sha256=hashlib.sha256(data).hexdigest(),
                           expected_size=len(data))


def _outside_state(tmp_path, dest) -> dict[str, bytes | str]:
    """Every path under tmp_path except dest, with content or link target."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(tmp_path):
        if dirpath == str(dest) or dirpath.startswith(str(dest) + os.sep):
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            if p == str(dest):
                continue
            state[p] = os.readlink(p) if os.path.islink(p) else open(p, "rb").read() if os.path.isfile(p) else "dir"
    return state


@pytest.fixture()
def arena(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "sentinel").write_bytes(b"must not change")
    dest = tmp_path / "dest"
    dest.mkdir()
    return tmp_path, outside, dest


def _cases(outside):
    abs_target = str(outside / "abs-evil")
    return {
        "absolute path": [_reg(abs_target)],
        "dot-dot traversal": [_reg("../outside/trav-evil")],
        "dot-dot inside a longer path": [_typed("a", tarfile.DIRTYPE), _reg("a/../../outside/trav2")],
        "pax path override": [_reg("benign", path="../outside/pax-evil")],
        "GNU.sparse.name override": [_reg("benign", **{"GNU.sparse.name": "../outside/sparse-evil"})],
        "symlink to parent": [_typed("esc", tarfile.SYMTYPE, "../outside"), _reg("esc/through")],
        "absolute symlink": [_typed("esc", tarfile.SYMTYPE, str(outside))],
        "symlink chain with inner ..": [_typed("x", tarfile.SYMTYPE, "."), _typed("y", tarfile.SYMTYPE, "x/../..")],
        "hard link outside": [_typed("hl", tarfile.LNKTYPE, "../outside/sentinel")],
        "absolute hard link": [_typed("hl", tarfile.LNKTYPE, str(outside / "sentinel"))],
        "hard link to a non-member": [_typed("hl", tarfile.LNKTYPE, "not-there")],
        "hard link to a symlink": [_typed("s", tarfile.SYMTYPE, "sub"), _typed("hl", tarfile.LNKTYPE, "s")],
        "character device": [_typed("null", tarfile.CHRTYPE)],
        "block device": [_typed("sda", tarfile.BLKTYPE)],
        "FIFO": [_typed("pipe", tarfile.FIFOTYPE)],
        "write through an earlier symlink": [_typed("d", tarfile.SYMTYPE, "sub"), _reg("d/file")],
        "directory replaced by a file": [_typed("d", tarfile.DIRTYPE), _reg("d/x", b"x"), _reg("d")],
        "directory replaced by a symlink": [_typed("d", tarfile.DIRTYPE), _typed("d", tarfile.SYMTYPE, ".")],
        "symlink turned into a directory": [_typed("s", tarfile.SYMTYPE, "."), _typed("s", tarfile.DIRTYPE)],
        "delete list escaping": [_delete_list("../outside/sentinel")],
        "delete list absolute": [_delete_list(str(outside / "sentinel"))],
        "delete list not first": [_reg("f", b"f"), _delete_list("f")],
    }


@pytest.mark.parametrize("case", list(_cases(Path("/unused"))))
def test_hostile_member_is_refused(arena, case):
    tmp_path, outside, dest = arena
    before = _outside_state(tmp_path, dest)
    data = _object(_cases(outside)[case])
    with pytest.raises(IntegrityError) as info:
        _extract(data, dest)
    assert info.value.exit_code == 6
    assert "refusing" in info.value.message or "delete list" in info.value.message, info.value.message
    assert _outside_state(tmp_path, dest) == before, "something appeared or changed outside dest"


def test_existing_symlink_in_dest_is_never_written_through(arena):
    """Phase 2 lands on phase 1's tree: a symlink already on disk counts like one from the stream."""
    tmp_path, outside, dest = arena
    os.symlink("../outside", dest / "pre")
    before = _outside_state(tmp_path, dest)
    for members in ([_reg("pre/evil")], [_typed("pre", tarfile.DIRTYPE)], [_delete_list("pre/sentinel")]):
        with pytest.raises(IntegrityError):
            _extract(_object(members), dest)
        assert _outside_state(tmp_path, dest) == before
    assert (outside / "sentinel").read_bytes() == b"must not change"


def test_safe_relative_links_and_delete_list_are_applied(arena):
    tmp_path, outside, dest = arena
    (dest / "stale").write_bytes(b"from phase 1")
    (dest / "stale-dir" / "deep").mkdir(parents=True)
    data = _object([
        _delete_list("stale", "stale-dir", "never-existed"),
        _typed("a", tarfile.DIRTYPE), _typed("a/b", tarfile.DIRTYPE),
        _typed("a/b/up", tarfile.SYMTYPE, "../../target"),  # climbs exactly to the root: fine
        _reg("target", b"t"),
        _typed("a/hard", tarfile.LNKTYPE, "target"),
        _reg(DELETED_MEMBER, b"an ordinary user file with that name"),  # no mark: extracted as data
    ])
    stats = _extract(data, dest)
    assert stats.deleted == 2
    assert not (dest / "stale").exists() and not (dest / "stale-dir").exists()
    assert (dest / "a" / "b" / "up").read_bytes() == b"t"
    assert os.path.samefile(dest / "a" / "hard", dest / "target")
    assert (dest / DELETED_MEMBER).read_bytes() == b"an ordinary user file with that name"


def _raw_tar(members) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for ti, data in members:
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


@pytest.mark.parametrize("damage", ["garbage header mid-stream", "no end-of-archive marker", "data after the end"])
def test_damaged_tar_inside_a_valid_object_is_refused(arena, damage):
    """A well-formed zstd frame whose hash matches can still carry a broken tar stream (a hostile store, or a
    bug); tarfile alone would just stop early, the end-of-archive check refuses it."""
    tmp_path, outside, dest = arena
    tar = _raw_tar([_reg("a", b"a" * 600), _reg("b", b"b")])
    if damage == "garbage header mid-stream":
        with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
            second = tf.getmembers()[1].offset  # where b's header starts
        tar = tar[:second] + b"\xff" * 512 + tar[second + 512:]
    elif damage == "no end-of-archive marker":
        tar = tar.rstrip(b"\0")
        tar += bytes(-len(tar) % 512)
    else:
        tar += b"trailing junk".ljust(512, b"\0")
    data = zstandard.ZstdCompressor().compress(tar)
    with pytest.raises(IntegrityError):
        _extract(data, dest)

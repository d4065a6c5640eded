"""Two-phase capture: scan/diff rules, TreeState persistence, and phase 1 + phase 2 == the phase-2 tree."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from migrator.archive import TreeState, capture_phase1, capture_phase2, diff, scan, write_archive
from migrator.archive.treestate import RACY_SLACK_NS
from tests.unit.test_archive import ListSink, build_rich_tree, fingerprint, restore, user_xattrs_supported


def _not_racy(state: TreeState) -> TreeState:
    """Pretend the scan started long after every file was last changed, to test diff's rule alone."""
    state.started_ns = time.time_ns() + 10 * RACY_SLACK_NS
    return state


def _mutate(src) -> None:
    """Every kind of change a live service (or an operator) makes between phase 1 and phase 2."""
    (src / "new-file").write_bytes(b"born in between")
    (src / "new-dir" / "sub").mkdir(parents=True)
    (src / "new-dir" / "sub" / "x").write_bytes(b"nested new")
    (src / "new-empty-dir").mkdir()
    with open(src / "plain.txt", "r+b") as fh:  # in place, same size: only ctime/mtime tell
        fh.write(b"HELLO")
    (src / "secret.key").unlink()
    shutil.rmtree(src / "deep" / "er")
    os.chmod(src / "owned", 0o640)  # chmod only
    os.chown(src / "empty-dir", 4321, 8765)  # chown only
    os.rename(src / "name with spaces é ü 日本", src / "renamed é")
    os.rename(src / "setgid-dir", src / "moved-dir")
    os.unlink(src / "link-to-plain")
    os.symlink("renamed é", src / "link-to-plain")  # retarget
    os.link(src / "hard-a", src / "hard-c")  # new hard link to an unchanged file
    os.unlink(src / "dangling")
    (src / "dangling").mkdir()  # symlink -> directory
    (src / "dangling" / "in").write_bytes(b"was a symlink")
    shutil.rmtree(src / "link-to-dir", ignore_errors=True)
    os.unlink(src / "link-to-dir")
    (src / "link-to-dir").write_bytes(b"symlink -> file")
    os.truncate(src / "sparse.img", 1000)
    if user_xattrs_supported(src):
        os.setxattr(src / "hard-a", "user.tag", b"phase2")  # xattr only


def test_phase1_plus_phase2_is_exactly_the_phase2_tree(tmp_path):
    src = tmp_path / "src"
    build_rich_tree(src)
    sink1 = ListSink()
    stats1, state = capture_phase1(src, [sink1])
    state.save(tmp_path / "phase1.state")
    _mutate(src)
    sink2 = ListSink()
    stats2, _ = capture_phase2(src, [sink2], TreeState.load(tmp_path / "phase1.state"))
    assert stats2.files < stats1.files + 20
    out = tmp_path / "out"
    restore(sink1.data(), out, stats1)
    ext2 = restore(sink2.data(), out, stats2)
    assert ext2.deleted > 0
    assert fingerprint(out) == fingerprint(src)


def test_phase2_catches_what_phase1_tar_saw_but_its_scan_did_not(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "old").write_bytes(b"old")
    state = scan(src)
    (src / "ephemeral").write_bytes(b"created after the scan, archived by phase 1's tar")
    sink1 = ListSink()
    stats1 = write_archive(src, [sink1], on_member=state.note_archived)
    os.unlink(src / "ephemeral")
    sink2 = ListSink()
    stats2, _ = capture_phase2(src, [sink2], state)
    out = tmp_path / "out"
    restore(sink1.data(), out, stats1)
    assert (out / "ephemeral").exists()
    restore(sink2.data(), out, stats2)
    assert fingerprint(out) == fingerprint(src)


def test_nothing_changed_gives_an_empty_but_valid_phase2(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"f")
    sink1 = ListSink()
    stats1, state = capture_phase1(src, [sink1])
    sink2 = ListSink()
    stats2, _ = capture_phase2(src, [sink2], _not_racy(state))
    assert stats2.files == 0
    out = tmp_path / "out"
    restore(sink1.data(), out, stats1)
    ext = restore(sink2.data(), out, stats2)
    assert ext.files == 0 and ext.deleted == 0
    assert fingerprint(out) == fingerprint(src)


def test_diff_rules(tmp_path):
    root = tmp_path / "t"
    (root / "d" / "e").mkdir(parents=True)
    for name in ("same", "chmod", "chown", "content", "gone", "rename-me", "linked"):
        (root / name).write_bytes(name.encode())
    (root / "d" / "e" / "deep-gone").write_bytes(b"x")
    (root / "d" / "keep").write_bytes(b"k")
    os.symlink("same", root / "sym")
    before = _not_racy(scan(root))
    os.chmod(root / "chmod", 0o600)
    os.chown(root / "chown", 1, 1)
    with open(root / "content", "r+b") as fh:
        fh.write(b"C")
    os.unlink(root / "gone")
    shutil.rmtree(root / "d" / "e")
    os.rename(root / "rename-me", root / "renamed")
    os.link(root / "linked", root / "linked-too")
    os.unlink(root / "sym")
    os.symlink("chmod", root / "sym")
    changed, deleted = diff(before, scan(root))
    assert set(changed) == {".", "chmod", "chown", "content", "renamed", "linked", "linked-too", "sym", "d"}
    assert "same" not in changed and "d/keep" not in changed
    assert deleted == ["d/e", "gone", "rename-me"]


def test_type_change_is_deleted_then_recreated(tmp_path):
    root = tmp_path / "t"
    (root / "was-dir").mkdir(parents=True)
    (root / "was-dir" / "child").write_bytes(b"c")
    (root / "was-file").write_bytes(b"f")
    before = _not_racy(scan(root))
    shutil.rmtree(root / "was-dir")
    (root / "was-dir").write_bytes(b"now a file")
    os.unlink(root / "was-file")
    (root / "was-file").mkdir()
    changed, deleted = diff(before, scan(root))
    assert deleted == ["was-dir", "was-file"]
    assert {"was-dir", "was-file"} <= set(changed)


def test_racy_entries_are_always_rearchived(tmp_path):
    """A change in the same clock tick as the scan can leave ctime unchanged: such entries count as changed."""
    root = tmp_path / "t"
    root.mkdir()
    (root / "fresh").write_bytes(b"x")
    before = scan(root)  # "fresh" was changed moments ago: within RACY_SLACK_NS of the scan
    changed, _ = diff(before, scan(root))
    assert "fresh" in changed


def test_treestate_save_load_round_trip(tmp_path):
    root = tmp_path / "t"
    root.mkdir()
    odd = os.fsdecode(b"bad-\xff-utf8")
    (root / odd).write_bytes(b"x")
    (root / "new\nline").write_bytes(b"y")
    os.symlink("new\nline", root / "ln")
    state = scan(root)
    state.note_archived("not-scanned")
    state.save(tmp_path / "s")
    loaded = TreeState.load(tmp_path / "s")
    assert loaded.entries == state.entries and loaded.started_ns == state.started_ns
    assert odd in loaded and loaded["ln"].target == "new\nline"


def test_parent_directory_times_survive_a_phase2_replace(tmp_path):
    """Restore replaces a changed file by unlink + create, which moves its directory's mtime: phase 2 must
    carry that (otherwise unchanged) directory's entry to set it back."""
    src = tmp_path / "src"
    (src / "quiet-dir").mkdir(parents=True)
    (src / "quiet-dir" / "f").write_bytes(b"before")
    os.utime(src / "quiet-dir", ns=(10**18, 10**18))
    sink1 = ListSink()
    stats1, state = capture_phase1(src, [sink1])
    with open(src / "quiet-dir" / "f", "r+b") as fh:  # in place: the directory itself does not change
        fh.write(b"AFTER!")
    sink2 = ListSink()
    stats2, _ = capture_phase2(src, [sink2], _not_racy(state))
    out = tmp_path / "out"
    restore(sink1.data(), out, stats1)
    restore(sink2.data(), out, stats2)
    assert fingerprint(out) == fingerprint(src)


def _reference_scan(root) -> dict:
    """What a scan must hold, from os.walk and plain path-based lstat: the walk's *at calls must agree."""
    out = {".": os.lstat(root)}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            out[os.path.relpath(path, root)] = os.lstat(path)
    return out


def test_scan_agrees_with_path_based_lstat(tmp_path):
    src = tmp_path / "src"
    build_rich_tree(src)
    for i in range(30):  # a few levels deep, a few wide
        (src / "wide" / f"d{i % 5}" / f"e{i % 3}").mkdir(parents=True, exist_ok=True)
        (src / "wide" / f"d{i % 5}" / f"e{i % 3}" / f"f{i}").write_bytes(b"x" * i)
    state = scan(src)
    ref = _reference_scan(src)
    assert set(state.entries) == set(ref)
    for path, st in ref.items():
        e = state[path]
        assert (e.ino, e.size, e.mtime_ns, e.ctime_ns, e.nlink) == (st.st_ino, st.st_size, st.st_mtime_ns,
                                                                      st.st_ctime_ns, st.st_nlink), path
        assert e.target == (os.readlink(src / path) if e.type == "l" else None), path


def test_scan_never_follows_a_directory_swapped_for_a_symlink(tmp_path):
    """Phase 1 runs live: a directory listed as one and replaced by a symlink before the walk enters it
    is skipped (the next scan sees the symlink), never walked through."""
    from migrator.archive.treestate import _walk

    src, outside = tmp_path / "src", tmp_path / "outside"
    (src / "d").mkdir(parents=True)
    (src / "d" / "inner").write_bytes(b"")
    outside.mkdir()
    (outside / "must-not-be-listed").write_bytes(b"")
    walk = _walk(str(src))
    assert next(walk)[0] == "."
    assert next(walk)[0] == "d"  # the root's only entry: the walk enters d only after this
    shutil.rmtree(src / "d")
    os.symlink(outside, src / "d")
    assert list(walk) == []


def test_abandoned_scan_closes_its_directories(tmp_path):
    from migrator.archive.treestate import _walk

    deep = tmp_path.joinpath(*[f"l{i}" for i in range(40)])
    deep.mkdir(parents=True)
    (deep / "leaf").write_bytes(b"")
    before = len(os.listdir("/proc/self/fd"))
    walk = _walk(str(tmp_path))
    paths = [next(walk)[0] for _ in range(30)]
    assert paths[-1].count("/") == 28  # 29 levels down, one descriptor open per level
    walk.close()
    assert len(os.listdir("/proc/self/fd")) == before
    assert sum(1 for _ in _walk(str(tmp_path))) == 42
    assert len(os.listdir("/proc/self/fd")) == before


def test_scan_follows_a_symlinked_root_but_nothing_below_it(tmp_path):
    """A data dir swapped for a symlink to another disk (deploy refuses to create one, an operator can
    still make one) is scanned as tar -C reads it, whole. The disk here is /dev/shm (its own tmpfs):
    "same filesystem" must mean the data's, not the link's, or the walk stops at the first level and
    phase 2 misses every change below it (what the scan before 2026-12-07 did)."""
    import tempfile

    disk = Path(tempfile.mkdtemp(dir="/dev/shm", prefix="migrator-test-"))
    assert os.stat(disk).st_dev != os.stat(tmp_path).st_dev, "needs the link and the data on two filesystems"
    try:
        _check_symlinked_root(tmp_path, disk / "data")
    finally:
        shutil.rmtree(disk)


def _check_symlinked_root(tmp_path, real):
    build_rich_tree(real)
    (real / "a" / "b").mkdir(parents=True)
    (real / "a" / "b" / "deep").write_bytes(b"deep")
    os.symlink(real, tmp_path / "link")
    via_link, direct = scan(tmp_path / "link"), scan(real)
    assert via_link.entries == direct.entries
    assert "a/b/deep" in via_link

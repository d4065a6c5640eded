"""durable: fsync of a directory and syncfs of a filesystem, on the real kernel."""

import errno
import os

import pytest

from migrator.durable import fsync_dir, sync_filesystem


def test_sync_filesystem_of_a_directory_and_of_a_file(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"x" * 65536)
    sync_filesystem(tmp_path)
    sync_filesystem(f)


def test_sync_filesystem_reports_the_kernel_error_with_the_path(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        sync_filesystem(tmp_path / "missing")
    assert info.value.filename == os.fspath(tmp_path / "missing")


def test_fsync_dir_refuses_a_file(tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    fsync_dir(tmp_path)
    with pytest.raises(OSError) as info:
        fsync_dir(f)
    assert info.value.errno == errno.ENOTDIR

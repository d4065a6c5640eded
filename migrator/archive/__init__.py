"""archive: snapshot objects of data directories: capture, change detection, safe extraction.

One object per volume data directory (per pass): GNU tar (pax) -> zstd -> optional age, hashed on the way.
Formats and rules: docs/snapshots.md#inside-the-objects. Errors: ArchiveError (tar/age failed, exit 1),
IntegrityError (the object is bad or hostile, exit 6)."""

from migrator.archive.capture import ArchiveStats, Sink, write_archive
from migrator.archive.extract import ExtractStats, extract_archive
from migrator.archive.tarstream import DELETED_MEMBER
from migrator.archive.treestate import Entry, TreeState, diff, scan
from migrator.archive.twophase import capture_delta, capture_phase1, capture_phase2, capture_quiet, phase1_hooks
from migrator.errors import ArchiveError

__all__ = [
    "DELETED_MEMBER",
    "ArchiveError",
    "ArchiveStats",
    "Entry",
    "ExtractStats",
    "Sink",
    "TreeState",
    "capture_delta",
    "capture_phase1",
    "capture_phase2",
    "capture_quiet",
    "diff",
    "extract_archive",
    "phase1_hooks",
    "scan",
    "write_archive",
]

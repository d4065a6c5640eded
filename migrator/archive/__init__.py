"""archive: snapshot objects of data directories — capture, change detection, safe extraction .

One object per volume data directory (per phase when two-phase): POSIX/pax tar by GNU tar (numeric
owners, modes, mtimes, symlinks, hard links, empty dirs, xattrs, ACLs, sparse files) -> zstd
(multi-threaded) -> optional age encryption, hashed (sha256) and counted on the way to the stores.

- capture.write_archive: the streaming capture pipeline, fanned out to every sink.
- treestate.scan/diff/TreeState: what changed between phase 1 and phase 2 (ctime-based, cannot miss).
- twophase.capture_phase1/capture_phase2/capture_delta/phase1_hooks: whole and delta passes (two-phase
  capture, incremental snapshots) wired in the only correct order.
- patch: phase-1 block digests of big files, phase-2 patch members (changed blocks only), applying them.
- extract.extract_archive: verify (sha256, size, bomb cap) and apply an object to a staging directory,
  refusing hostile members before GNU tar sees them.
- policy: the member rules shared by both ends, so capture never writes what restore would refuse.
- tarstream (capture's walk over tar's output, the delete-list member), emit (the stream restore hands
  to GNU tar), _proc (children and threads, always reaped).
Errors: ArchiveError (tar/age failed, exit 1), IntegrityError (the object is bad or hostile, exit 6).
"""

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

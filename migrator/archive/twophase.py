"""Two-phase capture of one data directory: phase 1 while writers run, phase 2 with writers stopped.

Owns the order that makes the pair exact. Phase 1 scans BEFORE tar starts, so every later change shows
as a moved ctime, and records what its tar archived that the scan did not see (created meanwhile).
Phase 2 scans again, diffs against phase 1's scan and archives only changed/new paths plus the delete
list. Extracting phase 1 then phase 2 into an empty directory yields exactly the tree as of phase 2.
"""

from __future__ import annotations

from pathlib import Path

from migrator.archive.capture import ArchiveStats, Sink, write_archive
from migrator.archive.treestate import TreeState, diff, scan


def capture_phase1(root: Path, sinks: list[Sink], **options) -> tuple[ArchiveStats, TreeState]:
    """Scan, then archive the whole live tree. Keep the returned state (TreeState.save) for phase 2.
    `options` are write_archive's (level, threads, recipients, progress)."""
    state = scan(root)
    stats = write_archive(root, sinks, on_member=state.note_archived, **options)
    return stats, state


def capture_phase2(root: Path, sinks: list[Sink], before: TreeState, **options) -> tuple[ArchiveStats, TreeState]:
    """With writers stopped: archive what changed since `before` (phase 1's state) and what was deleted."""
    after = scan(root)
    changed, deleted = diff(before, after)
    stats = write_archive(root, sinks, members=changed, deleted=deleted, **options)
    return stats, after

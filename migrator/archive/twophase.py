"""Two-phase capture of one data directory: phase 1 while writers run, phase 2 with writers stopped.

Owns the order that makes the pair exact. Phase 1 scans BEFORE tar starts, so every later change shows
as a moved ctime, and records what its tar archived that the scan did not see (created meanwhile), plus
the block digests of the big files it archived (patch.py). Phase 2 scans again, diffs against phase 1's
scan and archives only changed/new paths plus the delete list; a changed big file whose blocks phase 1
digested goes as a patch member (only its changed blocks) instead of whole. Extracting phase 1 then
phase 2 into an empty directory yields exactly the tree as of phase 2.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from migrator.archive import patch
from migrator.archive.capture import ArchiveStats, Sink, write_archive
from migrator.archive.treestate import TreeState, diff, scan


def phase1_hooks(state: TreeState) -> dict:
    """write_archive's keyword arguments that make an archive of the live tree a phase 1 for `state`
    (the scan taken just before it): what tar archived beyond the scan, and block digests."""
    return {"on_member": state.note_archived, "on_data": patch.recorder(state)}


def capture_phase1(root: Path, sinks: list[Sink], **options) -> tuple[ArchiveStats, TreeState]:
    """Scan, then archive the whole live tree. Keep the returned state (TreeState.save) for phase 2.
    `options` are write_archive's (level, threads, recipients, progress)."""
    state = scan(root)
    stats = write_archive(root, sinks, **phase1_hooks(state), **options)
    return stats, state


def capture_phase2(root: Path, sinks: list[Sink], before: TreeState, **options) -> tuple[ArchiveStats, TreeState]:
    """With writers stopped: archive what changed since `before` (phase 1's state) and what was deleted."""
    after = scan(root)
    changed, deleted = diff(before, after)
    patches, whole = patch.plan(root, before, after, changed)
    stats = write_archive(root, sinks, members=whole, deleted=deleted, prefix=patch.members(root, patches),
                          **options)
    return dataclasses.replace(stats, files=stats.files + len(patches), patched=len(patches)), after

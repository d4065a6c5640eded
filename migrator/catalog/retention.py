"""Which snapshots retention keeps: keep-last/daily/weekly/monthly buckets (GFS), plus kept tags.

Like restic's `forget`: the newest snapshot of each bucket; tags (pre-update by default) are kept."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

DEFAULT_KEEP_TAGS = ("pre-update",)


@dataclass
class Policy:
    keep_last: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_tags: tuple[str, ...] = DEFAULT_KEEP_TAGS

    @property
    def empty(self) -> bool:
        return not (self.keep_last or self.keep_daily or self.keep_weekly or self.keep_monthly)


@dataclass
class Decision:
    keep: dict[str, list[str]] = field(default_factory=dict)  # id -> reasons
    remove: list[str] = field(default_factory=list)


def decide(snapshots: list[tuple[str, float, list[str]]], policy: Policy) -> Decision:
    """snapshots: (id, created unix time, tags). Returns what to keep (with reasons) and what to remove."""
    ordered = sorted(snapshots, key=lambda s: (s[1], s[0]), reverse=True)  # newest first
    decision = Decision()

    def keep(sid: str, why: str) -> None:
        decision.keep.setdefault(sid, []).append(why)

    for sid, _t, _tags in ordered[: policy.keep_last]:
        keep(sid, "last")
    buckets = (
        ("daily", policy.keep_daily, "%Y-%m-%d"),
        ("weekly", policy.keep_weekly, "%G-W%V"),
        ("monthly", policy.keep_monthly, "%Y-%m"),
    )
    for label, count, fmt in buckets:
        seen: list[str] = []
        for sid, created, _tags in ordered:
            if len(seen) >= count:
                break
            bucket = datetime.fromtimestamp(created, UTC).strftime(fmt)
            if bucket not in seen:
                seen.append(bucket)
                keep(sid, label)
    for sid, _t, tags in ordered:
        for tag in tags:
            if tag in policy.keep_tags:
                keep(sid, f"tag {tag}")
    decision.remove = [sid for sid, _t, _tags in ordered if sid not in decision.keep]
    return decision

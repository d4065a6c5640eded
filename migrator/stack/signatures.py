"""Snapshot signatures for the verbs: trusted keys, the check before reading any object, this VSN's key.

The keys come from the plan's `backup.trusted_keys` and `--trusted-key`, never from the snapshot itself."""

from __future__ import annotations

from migrator.catalog.signing import UNCHECKED, UNSIGNED, VALID, TrustedKeys, key_text_of, summary

__all__ = ["UNCHECKED", "UNSIGNED", "VALID", "TrustedKeys", "summary", "check", "show_key", "trusted_keys"]
from migrator.catalog.snapshot import Snapshot
from migrator.plan.model import Plan
from migrator.stack.topology import Report
from migrator.state import signkey

NO_KEYS = "no trusted keys: set backup.trusted_keys in the plan or pass --trusted-key (`migrator key show`)"


def trusted_keys(plan: Plan | None, extra: list[str] | None = None) -> TrustedKeys:
    """Never from a snapshot's own plan copy: that is what a signature has to vouch for."""
    return TrustedKeys.of(plan.backup.get("trusted_keys") if plan is not None else None, extra)


def check(snap: Snapshot, volumes: list[str], trusted: TrustedKeys, report: Report) -> str:
    """VALID, UNCHECKED or UNSIGNED for `snap` and the chains of `volumes`, said on `report`; with trusted
    keys anything but VALID is an IntegrityError (exit 6), raised before any object is read."""
    statuses = trusted.check_chain(snap, volumes)
    word = summary(statuses)
    links = f" (and the {len(statuses) - 1} older snapshot(s) of its chain)" if len(statuses) > 1 else ""
    if word == VALID:
        report(f"snapshot {snap.id}{links}: signature valid (a trusted key)")
    elif word == UNCHECKED:
        report(f"snapshot {snap.id}{links} is signed, but the signature is UNCHECKED: {NO_KEYS}")
    else:
        missing = [sid for sid, status in statuses.items() if status == UNSIGNED]
        which = ("no manifest.sig" if missing == [snap.id] else
                 f"no manifest.sig in {', '.join(missing[:3])}{' …' if len(missing) > 3 else ''} of its chain")
        report(f"snapshot {snap.id} is UNSIGNED ({which}): nothing proves which VSN wrote it, and it was not checked")
    return word


def show_key() -> dict:
    """This VSN's public signing key (the key is created on first use). Never the private key."""
    key, created = signkey.load_or_create()
    return {"public_key": key_text_of(key), "algorithm": "ed25519", "key_file": str(signkey.key_path()),
            "created": created}

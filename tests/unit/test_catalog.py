"""Snapshot ids, manifest parsing (untrusted input) and GFS retention decisions."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from migrator.catalog.manifest import Manifest, ObjectEntry, is_snapshot_id, new_snapshot_id, snapshot_time
from migrator.catalog.retention import Policy, decide
from migrator.errors import IntegrityError


def ts(s: str) -> float:
    return datetime.strptime(s, "%Y-%m-%d %H:%M").replace(tzinfo=UTC).timestamp()


def test_snapshot_ids_sort_by_time_and_parse():
    a = new_snapshot_id(ts("2026-01-02 03:04"))
    b = new_snapshot_id(ts("2026-01-02 03:05"))
    assert a < b and is_snapshot_id(a)
    assert snapshot_time(a) == ts("2026-01-02 03:04")
    for bad in ("latest", "20260102T030400Z", "20260102T030400Z-zzzzzz", "../../etc", "2026-01-02"):
        assert not is_snapshot_id(bad)


def manifest(**over) -> Manifest:
    m = Manifest(snapshot_id="20260102T030400Z-abcdef", vsn="demo", created=1.0, hostname="h",
                 migrator_version="0.1.0", plan_sha256="0" * 64, tags=["pre-update"],
                 volumes={"db": {"mounts": ["data"], "mode": "two-phase"}},
                 objects=[ObjectEntry("db.1.tar.zst", "db", 1, 10, "a" * 64, 3, 100),
                          ObjectEntry("db.2.tar.zst", "db", 2, 5, "b" * 64, 1, 10)],
                 timings={"capture": 1.5, "downtime": {"dbsvc": 0.4}})
    for k, v in over.items():
        setattr(m, k, v)
    return m


def test_manifest_round_trip():
    m = manifest()
    back = Manifest.parse(m.to_bytes(), "test")
    assert back == m and back.size == 15
    assert [o.phase for o in back.objects_of("db")] == [1, 2]


def test_acl_counts_round_trip_and_older_manifests_have_none():
    m = manifest()
    m.objects[0].acls, m.objects[1].acls = 0, 2
    assert [o.acls for o in Manifest.parse(m.to_bytes(), "test").objects] == [0, 2]
    old = manifest().to_json()  # written before 0.3: no "acls" key at all
    assert all("acls" not in o for o in old["objects"])
    assert [o.acls for o in Manifest.parse(json.dumps(old).encode(), "test").objects] == [None, None]


@pytest.mark.parametrize("mutate", [
    lambda r: r.update(format=3),
    lambda r: r["objects"][0].update(name="../../etc/passwd"),
    lambda r: r["volumes"]["db"].update(incremental=True),
    lambda r: r.update(parent="29991231T235959Z-abcdef"),
    lambda r: r.update(trees=[{"name": "db.tree.zst", "volume": "db", "size": 1, "sha256": "0" * 64, "entries": 1}] * 2),
    lambda r: r.update(trees=[{"name": "other.tree.zst", "volume": "other", "size": 1, "sha256": "0" * 64,
                               "entries": 1}]),
    lambda r: r["objects"][0].update(sha256="xyz"),
    lambda r: r["objects"][0].update(size=-1),
    lambda r: r["objects"][0].update(acls=-1),
    lambda r: r["objects"][0].update(volume="other"),
    lambda r: r["objects"].append(dict(r["objects"][0])),
    lambda r: r.update(snapshot_id="latest"),
    lambda r: r["objects"][0].update(sha256=r["objects"][0]["sha256"] + "\n"),
    lambda r: r.update(extra="field"),
    lambda r: r.pop("objects"),
], ids=["format", "traversal-name", "incremental-without-parent", "parent-not-older", "two-trees",
        "foreign-tree", "bad-sha", "negative-size", "negative-acls", "foreign-volume", "duplicate", "bad-id",
        "sha-with-newline", "extra-field", "missing-objects"])
def test_malformed_manifest_is_an_integrity_error(mutate):
    raw = manifest().to_json()
    mutate(raw)
    with pytest.raises(IntegrityError):
        Manifest.parse(json.dumps(raw).encode(), "test")


def test_garbage_manifest():
    with pytest.raises(IntegrityError):
        Manifest.parse(b"\xff\xfe not json", "test")


def snaps(*stamps_and_tags):
    out = []
    for item in stamps_and_tags:
        stamp, tags = (item, []) if isinstance(item, str) else item
        out.append((new_snapshot_id(ts(stamp)), ts(stamp), tags))
    return out


def test_gfs_keeps_newest_per_bucket():
    s = snaps("2026-03-01 01:00", "2026-03-01 13:00", "2026-03-02 01:00", "2026-03-09 01:00",
              "2026-02-10 01:00", "2026-01-05 01:00")
    ids = {stamp: s[i][0] for i, stamp in enumerate(["m1a", "m1b", "m2", "m9", "f10", "j5"])}
    d = decide(s, Policy(keep_daily=2, keep_weekly=2, keep_monthly=3))
    # daily: 03-09 and 03-02; weekly: W10 (03-09) and W09 (03-02 is Monday of W10? no: 2026-03-02 is W10)
    assert ids["m9"] in d.keep and "daily" in d.keep[ids["m9"]]
    assert ids["m2"] in d.keep
    assert ids["m1a"] in d.remove  # same day as a newer one
    assert ids["f10"] in d.keep and "monthly" in d.keep[ids["f10"]]
    assert ids["j5"] in d.keep and "monthly" in d.keep[ids["j5"]]


def test_keep_last_and_tags():
    s = snaps("2026-03-01 01:00", ("2026-03-02 01:00", ["pre-update"]), "2026-03-03 01:00", "2026-03-04 01:00")
    d = decide(s, Policy(keep_last=1))
    assert d.keep[s[3][0]] == ["last"]
    assert d.keep[s[1][0]] == ["tag pre-update"]  # tagged pre-update snapshots are kept unless asked
    assert set(d.remove) == {s[0][0], s[2][0]}
    d2 = decide(s, Policy(keep_last=1, keep_tags=()))
    assert s[1][0] in d2.remove


def test_a_manifest_seen_valid_skips_the_schema_next_time(tmp_path, monkeypatch):
    from migrator import jsonschemas
    from migrator.state.conforming import ConformingDocs

    data = manifest().to_bytes()
    first = Manifest.parse(data, "test", ConformingDocs(tmp_path))

    def no_validator(*args, **kwargs):
        raise AssertionError("the schema validator was needed")

    monkeypatch.setattr(jsonschemas, "errors", no_validator)
    assert Manifest.parse(data, "test", ConformingDocs(tmp_path)) == first
    tampered = data.replace(b'"size": 10', b'"size": 11')
    assert tampered != data
    with pytest.raises(AssertionError, match="validator was needed"):  # other bytes: validated again
        Manifest.parse(tampered, "test", ConformingDocs(tmp_path))


def test_an_invalid_manifest_is_never_remembered(tmp_path):
    from migrator.state.conforming import ConformingDocs

    raw = manifest().to_json()
    raw["objects"][0]["volume"] = "other"  # passes the schema, fails the volume check
    data = json.dumps(raw).encode()
    docs = ConformingDocs(tmp_path)
    for _ in range(2):
        with pytest.raises(IntegrityError):
            Manifest.parse(data, "test", docs)
    from migrator.jsonschemas import schema_bytes
    assert not docs.knows(schema_bytes("manifest"), data)

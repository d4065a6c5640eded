"""Deterministic, seeded data set shaped like a VSN volume, generated once and reused.

Layout under `<dest>` (the volume's data dir, `<data_root>/vol/data`), for scale s (`--size-gb`):
- `db/table{0,1,2}.ibd`: 3 "database" files of 200 MiB * s each, made of 128-byte records: 88 bytes
  picked from a pool of 256 record templates (text-ish, like rows of a few tables) + 40 bytes of PRNG
  data (ids, hashes, timestamps). zstd -3 compresses them ~3x: the templates match, the random tail not;
- `blobs/blob-NNN.bin`: round(30 * s) files of 10 MiB of PRNG data (uploads, media): incompressible;
- `files/dNN/eNN/f-NNNNN.txt`: round(20000 * s) text files of 1-16 KiB (configs, mail, thumbnails
  metadata) in 2-level nested dirs, ~100 per dir, cut from a 16 MiB seeded word corpus, each with a
  unique header line.
Total for s=1: ~600 + 300 + ~165 MiB = ~1.04 GiB.

Every piece of content comes from `random.Random(f"{seed}:{part}")`, so a file's bytes do not depend on
generation order. A marker JSON (params + totals) beside the data root is written last: a data set is
reused only when the marker matches the requested parameters.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

GENERATOR_VERSION = 3
MIB = 1024 * 1024
RECORD = 128  # bytes per database record
RECORD_RANDOM = 40  # of which this many are PRNG bytes: sets zstd's ratio on the db files (~3x)
TEMPLATES = 256
DB_FILES = 3
DB_FILE_MIB = 200
BLOB_MIB = 10
BLOBS = 30
SMALL_FILES = 20000
SMALL_MIN, SMALL_MAX = 1024, 16 * 1024
FILES_PER_DIR = 100
DIRS_PER_LEVEL = 20
CORPUS_BYTES = 16 * MIB
WORDS = ("alpha beta gamma delta epsilon order invoice customer account balance status shipped pending "
         "address street city postal country email phone note total amount tax currency eur usd price "
         "quantity item product sku warehouse config server port timeout retry enabled disabled true false "
         "user admin group role permission token session cache index page title body draft published "
         "monday tuesday wednesday thursday friday january february march april may june july").split()


@dataclass(frozen=True)
class Params:
    scale: float
    seed: int = 20240601
    version: int = GENERATOR_VERSION

    @property
    def db_bytes(self) -> int:
        return int(DB_FILE_MIB * self.scale) * MIB

    @property
    def blobs(self) -> int:
        return max(1, round(BLOBS * self.scale))

    @property
    def small_files(self) -> int:
        return max(1, round(SMALL_FILES * self.scale))


def _rng(p: Params, part: str) -> random.Random:
    return random.Random(f"{p.seed}:{part}")


def _templates(p: Params) -> list[bytes]:
    r = _rng(p, "templates")
    out = []
    for i in range(TEMPLATES):
        words = " ".join(r.choice(WORDS) for _ in range(20))
        row = f"T{i % 7}|{words}|".encode()
        out.append((row * 2)[: RECORD - RECORD_RANDOM - 1] + b"|")
    return out


def _write_db_file(path: Path, p: Params, index: int, templates: list[bytes]) -> None:
    r = _rng(p, f"db{index}")
    per_chunk = MIB // RECORD
    with open(path, "wb") as fh:
        for _ in range(p.db_bytes // MIB):
            rand = r.randbytes(per_chunk * RECORD_RANDOM)
            sel = r.randbytes(per_chunk)
            mv = memoryview(rand)
            pieces = []
            for k in range(per_chunk):
                pieces.append(templates[sel[k]])
                pieces.append(mv[k * RECORD_RANDOM:(k + 1) * RECORD_RANDOM])
            fh.write(b"".join(pieces))


def _write_blob(path: Path, p: Params, index: int) -> None:
    r = _rng(p, f"blob{index}")
    with open(path, "wb") as fh:
        for _ in range(BLOB_MIB):
            fh.write(r.randbytes(MIB))


def _corpus(p: Params) -> bytes:
    r = _rng(p, "corpus")
    vocab = WORDS + [f"{w}{n}" for w in WORDS for n in range(40)]
    lines, size = [], 0
    while size < CORPUS_BYTES:
        line = " ".join(r.choices(vocab, k=r.randint(4, 16))).encode() + b"\n"
        lines.append(line)
        size += len(line)
    return b"".join(lines)


def small_file_paths(p: Params) -> list[str]:
    """Relative paths (under the data dir) of the small files, in generation order."""
    out = []
    for i in range(p.small_files):
        d = i // FILES_PER_DIR
        out.append(f"files/d{d // DIRS_PER_LEVEL:02d}/e{d % DIRS_PER_LEVEL:02d}/f-{i:05d}.txt")
    return out


def db_file_paths() -> list[str]:
    return [f"db/table{i}.ibd" for i in range(DB_FILES)]


def _write_small_files(dest: Path, p: Params) -> int:
    r = _rng(p, "small")
    corpus = _corpus(p)
    total = 0
    for i, rel in enumerate(small_file_paths(p)):
        path = dest / rel
        if i % FILES_PER_DIR == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
        size = r.randint(SMALL_MIN, SMALL_MAX)
        off = r.randrange(0, len(corpus) - size)
        header = f"# file {i} seed {p.seed} size {size}\n".encode()
        body = header + corpus[off:off + size - len(header)]
        path.write_bytes(body)
        total += len(body)
    return total


def marker_path(data_root: Path) -> Path:
    return data_root.parent / f"{data_root.name}.dataset.json"


def ensure(data_root: Path, p: Params, log=print) -> dict:
    """Generate `<data_root>/vol/data` for `p` unless a matching marker says it is there. Returns the marker."""
    marker = marker_path(data_root)
    want = asdict(p)
    if marker.exists():
        try:
            have = json.loads(marker.read_text())
        except ValueError:
            have = {}
        if have.get("params") == want and (data_root / "vol" / "data").is_dir():
            log(f"data set {data_root} (scale {p.scale}) reused: {have['bytes'] / MIB:.0f} MiB, {have['files']} files")
            return have
    log(f"generating data set {data_root} (scale {p.scale}, seed {p.seed}) ...")
    started = time.monotonic()
    marker.unlink(missing_ok=True)
    shutil.rmtree(data_root, ignore_errors=True)
    dest = data_root / "vol" / "data"
    (dest / "db").mkdir(parents=True)
    (dest / "blobs").mkdir()
    templates = _templates(p)
    for i, rel in enumerate(db_file_paths()):
        _write_db_file(dest / rel, p, i, templates)
    for i in range(p.blobs):
        _write_blob(dest / "blobs" / f"blob-{i:03d}.bin", p, i)
    small = _write_small_files(dest, p)
    os.sync()  # flush before anything is timed: writeback must not compete with the measured commands
    total = DB_FILES * p.db_bytes + p.blobs * BLOB_MIB * MIB + small
    files = DB_FILES + p.blobs + p.small_files
    info = {"params": want, "bytes": total, "files": files, "db_bytes": DB_FILES * p.db_bytes,
            "blob_bytes": p.blobs * BLOB_MIB * MIB, "small_bytes": small,
            "generated_s": round(time.monotonic() - started, 1)}
    marker.write_text(json.dumps(info, indent=2))
    log(f"generated {total / MIB:.0f} MiB in {files} files in {info['generated_s']} s")
    return info

"""`move --install`'s wheelhouse: built offline from this environment, complete (migrator, every runtime
dependency, pip), valid wheels (RECORD hashes), cached by content; the target-side script installs with
no index."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import zipfile

from migrator import __version__
from migrator.remote import install


def test_wheelhouse_is_complete_valid_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv(install.CACHE_ENV, str(tmp_path))
    key, tar = install.wheelhouse()
    names = install.wheel_names(tar)
    prefixes = {n.split("-")[0].lower() for n in names}
    assert {"migrator", "pip", "paramiko", "typer", "jsonschema", "zstandard", "podman", "boto3"} <= prefixes
    assert "pytest" not in prefixes and "hypothesis" not in prefixes  # test extras stay home
    assert "PYTHON_TAG" in names
    assert install.wheelhouse() == (key, tar)  # second call: the cache

    import tarfile

    with tarfile.open(tar) as archive:
        member = next(n for n in names if n.startswith("migrator-"))
        wheel = zipfile.ZipFile(io.BytesIO(archive.extractfile(member).read()))
    record = wheel.read(f"migrator-{__version__}.dist-info/RECORD").decode()
    rows = list(csv.reader(io.StringIO(record)))
    assert any(r[0] == "migrator/schemas/plan.schema.json" for r in rows)
    assert not any("__pycache__" in r[0] for r in rows)
    for path, digest, size in rows:
        if digest:
            data = wheel.read(path)
            want = "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            assert (digest, int(size)) == (want, len(data)), path
    meta = wheel.read(f"migrator-{__version__}.dist-info/METADATA").decode()
    assert "Requires-Dist: paramiko" in meta and "pytest" not in meta
    assert "migrator = migrator.cli.app:main" in wheel.read(f"migrator-{__version__}.dist-info/entry_points.txt").decode()


def test_wheel_tags_keep_binary_compatibility():
    assert install._wheel_tags("Tag: py3-none-any\n") == "py3-none-any"
    assert install._wheel_tags("Tag: py2-none-any\nTag: py3-none-any\n") == "py2.py3-none-any"
    assert install._wheel_tags("Tag: cp311-cp311-manylinux_2_17_x86_64\nTag: cp311-cp311-manylinux2014_x86_64\n") \
        == "cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64"


def test_install_script_is_offline_and_quoted():
    script = install.install_script(install.InstallOptions("/opt/my migrator", "/usr/local/bin/migrator"), "abc123")
    assert "--no-index" in script and "PIP_CONFIG_FILE=/dev/null" in script and "--without-pip" in script
    assert "'/opt/my migrator/venv'" in script
    assert "ln -sfn" in script
    assert "ln -sfn" not in install.install_script(install.InstallOptions("/opt/m", ""), "abc123")

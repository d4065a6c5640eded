"""Fixtures the unit tests share: the lab's writer plan (data root under tmp_path) and a valid secrets file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

# The demo's shape with a shell writer standing in for the database: what most tests deploy.
WRITER_PLAN = Path(__file__).resolve().parents[1] / "lab" / "writer-plan.json"


@pytest.fixture()
def good(tmp_path) -> dict:
    """The writer plan as a dict, its data root inside tmp_path."""
    raw = json.loads(WRITER_PLAN.read_text())
    raw["vsn"]["data_root"] = str(tmp_path / "data")
    return raw


@pytest.fixture()
def secrets_file(tmp_path) -> Path:
    path = tmp_path / "secrets.json"
    path.write_text(json.dumps({"db_password": "s3cr3t-value", "smtp_pw": "x"}))
    path.chmod(0o600)
    return path

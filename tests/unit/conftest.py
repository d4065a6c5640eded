"""Fixtures the unit tests share: the demo plan (data root under tmp_path) and a valid secrets file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture()
def good(tmp_path) -> dict:
    """The demo plan as a dict, its data root inside tmp_path."""
    raw = json.loads((EXAMPLES / "demo-plan.json").read_text())
    raw["vsn"]["data_root"] = str(tmp_path / "data")
    return raw


@pytest.fixture()
def secrets_file(tmp_path) -> Path:
    path = tmp_path / "secrets.json"
    path.write_text(json.dumps({"db_password": "s3cr3t-value", "smtp_pw": "x"}))
    path.chmod(0o600)
    return path

"""Deployment plan and secrets: load, validate (schema + special checks), and plain dataclasses.

The rest of the code sees only `Plan` (model.py) and `Secrets`; raw JSON stays in this package.
"""

from migrator.plan.load import load_plan, load_secrets, validate_files
from migrator.plan.model import Plan, Secrets

__all__ = ["Plan", "Secrets", "load_plan", "load_secrets", "validate_files"]

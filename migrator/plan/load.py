"""Load and validate a plan and its secrets file: JSON schema plus the checks a schema cannot express.

Every problem is collected (not just the first) and named by its JSON path."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from migrator import jsonschemas, strictjson
from migrator.errors import PlanInvalid
from migrator.plan.checks import special_checks
from migrator.plan.model import Plan, Secrets
from migrator.strictjson import json_path

if TYPE_CHECKING:
    from migrator.state.conforming import ConformingDocs

# A plan or secrets file is a few KB; refuse anything huge before parsing it (untrusted input).
MAX_FILE_BYTES = 1024 * 1024


def _read_doc(path: str | os.PathLike, what: str) -> tuple[bytes, object]:
    """A JSON document's bytes and value, parsed strictly (strictjson: no NaN, no duplicate keys, no
    runaway nesting or digits); any problem is PlanInvalid naming its JSON path."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise PlanInvalid(f"cannot read {what} {p}: {exc.strerror}", hint=f"check the {what} path") from exc
    if len(data) > MAX_FILE_BYTES:
        raise PlanInvalid(f"{what} {p} is larger than {MAX_FILE_BYTES} bytes", details=["(root): file too large"])
    try:
        return data, strictjson.loads(data)
    except strictjson.Refused as exc:
        details = [_in_secrets(p) for p in exc.problems] if what == "secrets file" else exc.problems
        raise PlanInvalid(f"{what} {p} is refused: {details[0]}", details=details) from None
    except UnicodeDecodeError as exc:
        raise PlanInvalid(f"{what} {p} is not UTF-8", details=[f"(root): {exc}"]) from exc
    except json.JSONDecodeError as exc:
        raise PlanInvalid(
            f"{what} {p} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
            details=[f"(root): {exc.msg} at line {exc.lineno} column {exc.colno}"],
        ) from exc


def _in_secrets(problem: str) -> str:
    """A problem's path as a path in the secrets file: (root) -> (secrets), key -> (secrets).key."""
    if problem.startswith("(root)"):
        return problem.replace("(root)", "(secrets)", 1)
    return f"(secrets){problem}" if problem.startswith("[") else f"(secrets).{problem}"


def _rule_only(err) -> str:
    """What a secrets file breaks, by the rule alone: jsonschema's own message quotes the value (a secret).
    A key is a name, not a secret, so a bad key is quoted."""
    rule, limit = err.validator, err.validator_value
    if rule == "pattern" and "propertyNames" in err.schema_path:
        return f"key {json.dumps(str(err.instance)[:64])} does not match {limit!r}"
    return {"type": f"must be of type {limit} (the value is not shown)",
            "maxLength": f"is longer than {limit} characters (the value is not shown)",
            "maxProperties": f"has more than {limit} keys"}.get(rule, f"breaks the schema rule {rule!r}")


def schema_problems(name: str, doc: object) -> list[str]:
    problems = []
    for err in jsonschemas.errors(name, doc, check_formats=True):
        message = _rule_only(err) if name == "secrets" else err.message
        if len(message) > 300:  # a huge bad value must not flood the terminal
            message = message[:300] + "…"
        problems.append(f"{json_path(err.absolute_path)}: {message}")
    return problems


def known_schema_problems(name: str, data: bytes, doc: object, conforming: ConformingDocs | None) -> list[str]:
    """schema_problems, skipped for a document `conforming` has seen pass (same schema, same bytes)."""
    if conforming is None:
        return schema_problems(name, doc)
    if conforming.knows(jsonschemas.schema_bytes(name), data):
        return []
    problems = schema_problems(name, doc)
    if not problems:
        conforming.add(jsonschemas.schema_bytes(name), data)
    return problems


def secrets_file_problems(path: Path) -> list[str]:
    """The secrets file must be a regular file, mode 0600 (no group/other bits), owned by the caller."""
    try:
        st = path.lstat()
    except OSError as exc:
        return [f"(secrets): cannot stat {path}: {exc.strerror}"]
    problems = []
    if not stat.S_ISREG(st.st_mode):
        problems.append(f"(secrets): {path} is not a regular file")
    if stat.S_IMODE(st.st_mode) & 0o077:
        problems.append(f"(secrets): {path} has mode {stat.S_IMODE(st.st_mode):04o}; it must be 0600 (chmod 600 {path})")
    if st.st_uid != os.geteuid():
        problems.append(f"(secrets): {path} is owned by uid {st.st_uid}, not by the caller (uid {os.geteuid()})")
    return problems


def validate_files(plan_path: str | os.PathLike, secrets_path: str | os.PathLike | None = None,
                   conforming: ConformingDocs | None = None) -> tuple[Plan, Secrets]:
    """Load both files and run every check; raise PlanInvalid listing all problems, else return them.
    With `conforming`, the schema verdict of a document seen before is reused (see known_schema_problems)."""
    data, raw = _read_doc(plan_path, "plan")
    problems = known_schema_problems("plan", data, raw, conforming)
    secrets = Secrets(path=str(secrets_path) if secrets_path else None)
    if secrets_path is not None:
        sp = Path(secrets_path)
        file_problems = secrets_file_problems(sp)
        if file_problems:
            problems += file_problems
        else:
            secrets_data, raw_secrets = _read_doc(sp, "secrets file")
            secret_schema_problems = known_schema_problems("secrets", secrets_data, raw_secrets, conforming)
            problems += [_in_secrets(p) for p in secret_schema_problems]
            if not secret_schema_problems:
                secrets = Secrets(values=dict(raw_secrets), path=str(sp))
    if not problems:
        # Special checks assume the shapes the schema guarantees.
        problems += special_checks(raw, secrets, secrets_given=secrets_path is not None)
    if problems:
        raise PlanInvalid(f"plan {plan_path} is invalid: {len(problems)} problem(s)", details=problems)
    return Plan.from_json(raw), secrets


def load_plan(plan_path: str | os.PathLike, secrets_path: str | os.PathLike | None = None) -> tuple[Plan, Secrets]:
    return validate_files(plan_path, secrets_path)


def load_secrets(secrets_path: str | os.PathLike) -> Secrets:
    sp = Path(secrets_path)
    problems = secrets_file_problems(sp)
    raw = None if problems else _read_doc(sp, "secrets file")[1]
    if raw is not None:
        problems += schema_problems("secrets", raw)
    if problems:
        raise PlanInvalid(f"secrets file {sp} is invalid", details=problems)
    return Secrets(values=dict(raw), path=str(sp))

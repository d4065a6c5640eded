"""Stack state: the transition table, the pending-state context, inference for older VSNs."""

from __future__ import annotations

import json

import pytest

from migrator.errors import StateError
from migrator.state import stackstate as ss


@pytest.fixture(autouse=True)
def state(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGRATOR_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


def test_rest_and_pending_states_are_seed_004s_six():
    assert set(ss.STATES) == {"Running", "Failure", "CreatePending", "UpdatePending", "DeletePending", "Archived"}
    assert set(ss.PENDING) == {"CreatePending", "UpdatePending", "DeletePending"}
    # Every pending state ends in a rest state (or no stack); rest states only lead to pending ones.
    for src, nxt in ss.TRANSITIONS.items():
        if src in ss.PENDING:
            assert all(d not in ss.PENDING for d in nxt) and ss.FAILURE in nxt
        else:
            assert all(d in ss.PENDING for d in nxt)


ALLOWED = [(None, "CreatePending"), ("CreatePending", "Running"), ("CreatePending", "Failure"),
           ("Running", "UpdatePending"), ("UpdatePending", "Running"), ("UpdatePending", "Failure"),
           ("Running", "DeletePending"), ("DeletePending", "Archived"), ("Archived", "CreatePending"),
           ("Failure", "CreatePending"), ("Archived", "DeletePending"), ("DeletePending", None)]
FORBIDDEN = [(None, "Running"), ("Archived", "UpdatePending"), ("Archived", "Running"), ("Running", "Archived"),
             ("CreatePending", "Archived"), ("Failure", "Running"), ("DeletePending", "Running"),
             ("UpdatePending", "Archived"), ("CreatePending", "UpdatePending")]


@pytest.mark.parametrize("src,dst", ALLOWED)
def test_allowed_transitions(src, dst):
    assert ss.allowed(src, dst)


@pytest.mark.parametrize("src,dst", FORBIDDEN)
def test_forbidden_transitions(src, dst):
    assert not ss.allowed(src, dst)


def test_lifecycle_through_the_table(state):
    assert ss.current() is None
    with ss.pending("deploy"):
        assert ss.current() == "CreatePending"
    assert ss.current() == "Running"
    with ss.pending("upgrade"):
        assert ss.current() == "UpdatePending"
    assert ss.current() == "Running"
    with ss.pending("archive"):
        pass
    rec = ss.load()
    assert rec["state"] == "Archived" and rec["previous"] == "DeletePending" and rec["verb"] == "archive"
    with pytest.raises(ss.InvalidTransition) as exc:
        with ss.pending("upgrade"):
            raise AssertionError("must not run")
    assert exc.value.exit_code == 1 and isinstance(exc.value, StateError)
    assert "Archived" in exc.value.message and ss.current() == "Archived"  # refused: nothing changed
    with ss.pending("unarchive"):
        pass
    assert ss.current() == "Running"
    with ss.pending("cleanup"):
        pass
    assert ss.current() is None and not (state / "stack_state.json").exists()


def test_failure_records_the_error_and_reraises():
    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with ss.pending("deploy"):
            raise Boom("image missing")
    rec = ss.load()
    assert rec["state"] == "Failure" and rec["error"] == "image missing" and rec["verb"] == "deploy"
    with ss.pending("deploy"):  # Failure -> CreatePending -> Running: a redeploy fixes it
        pass
    assert ss.current() == "Running"


def test_invalid_direct_transition_raises():
    with pytest.raises(ss.InvalidTransition):
        ss.transition("Running", "deploy")  # absent -> Running skips CreatePending


def test_interrupted_pending_state_becomes_failure_first():
    ss.transition("CreatePending", "deploy")  # a deploy that was SIGKILLed here
    assert ss.settle_interrupted() == "CreatePending"
    rec = ss.load()
    assert rec["state"] == "Failure" and "interrupted" in rec["error"]
    ss.transition("CreatePending", "deploy")
    with ss.pending("deploy"):  # the next lifecycle command settles it by itself
        pass
    assert ss.current() == "Running"


def test_state_inferred_for_a_vsn_deployed_before_stack_states(state):
    state.mkdir(parents=True, exist_ok=True)
    (state / "deployment.json").write_text(json.dumps({"plan": "/x", "secrets": None, "deployed_at": 1.0}))
    assert ss.current() == "Running"
    (state / "deployment.json").write_text(json.dumps({"plan": "/x", "secrets": None, "deployed_at": None}))
    assert ss.current() == "Archived"

"""stack.timing.StepTimer, on a fake clock: laps run from the previous lap, steps time their block (also when it
raises), a repeated name adds up, and every duration is rounded to milliseconds into the caller's dict."""

from __future__ import annotations

import pytest

from migrator.stack.timing import StepTimer


def ticking(*times: float):
    """A clock that returns `times`, one per call."""
    return iter(times).__next__


def test_laps_run_from_the_previous_lap_and_add_up():
    timer = StepTimer(clock=ticking(100.0, 100.25, 101.0, 101.0004, 103.5))
    timer.lap("prepare")
    timer.lap("waiting")
    timer.lap("receive")
    timer.lap("waiting")
    assert timer.durations == {"prepare": 0.25, "waiting": 3.25, "receive": 0.0}


def test_steps_time_their_block_into_the_given_dict_even_when_it_raises():
    steps = {"stop": 0.031}
    timer = StepTimer(steps, clock=ticking(0.0, 1.0, 1.5, 2.0, 2.2506, 5.0, 5.5))
    with timer.step("delta"):
        pass
    with pytest.raises(KeyError), timer.step("verify"):
        raise KeyError("boom")
    with timer.step("delta"):
        pass
    assert steps == {"stop": 0.031, "delta": 1.0, "verify": 0.251}
    assert list(steps) == ["stop", "delta", "verify"]  # the caller's dict, in the order the steps first ran
    assert timer.durations is steps

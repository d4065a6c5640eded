"""migrator.retry: attempts, backoff growth and cap, jitter bounds, which errors are retried, both entry
points. A recording fake `sleep` replaces time.sleep, so nothing here waits."""

from __future__ import annotations

import pytest

from migrator.retry import RetryPolicy, call_with_retry, retry


class Transient(Exception):
    pass


class Permanent(Exception):
    pass


def make_policy(**kw) -> tuple[RetryPolicy, list[float]]:
    slept: list[float] = []
    defaults = dict(attempts=4, base_delay=1.0, max_delay=100.0,
                    retry_on=lambda e: isinstance(e, Transient), sleep=slept.append, jitter=lambda: 1.0)
    defaults.update(kw)
    return RetryPolicy(**defaults), slept


class Flaky:
    """Fails with the given exceptions in order, then returns 'ok'."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        self.last_args = (args, kwargs)
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def test_success_first_time_does_not_sleep():
    policy, slept = make_policy()
    fn = Flaky()
    assert call_with_retry(policy, fn, 1, b=2) == "ok"
    assert fn.calls == 1 and slept == [] and fn.last_args == ((1,), {"b": 2})


def test_transient_errors_are_retried_with_exponential_backoff():
    policy, slept = make_policy()
    fn = Flaky(Transient(), Transient(), Transient())
    assert call_with_retry(policy, fn) == "ok"
    assert fn.calls == 4
    # jitter()=1.0 -> the full backoff: 1, 2, 4
    assert slept == pytest.approx([1.0, 2.0, 4.0])


def test_gives_up_after_attempts_and_reraises_last_error():
    policy, slept = make_policy(attempts=3)
    last = Transient("third")
    fn = Flaky(Transient("first"), Transient("second"), last, Transient("never reached"))
    with pytest.raises(Transient) as info:
        call_with_retry(policy, fn)
    assert info.value is last
    assert fn.calls == 3 and len(slept) == 2


def test_permanent_error_is_not_retried():
    policy, slept = make_policy()
    fn = Flaky(Permanent("no"))
    with pytest.raises(Permanent):
        call_with_retry(policy, fn)
    assert fn.calls == 1 and slept == []


def test_permanent_after_transient_stops_at_once():
    policy, slept = make_policy()
    fn = Flaky(Transient(), Permanent())
    with pytest.raises(Permanent):
        call_with_retry(policy, fn)
    assert fn.calls == 2 and len(slept) == 1


def test_delay_is_capped():
    policy, slept = make_policy(attempts=8, base_delay=1.0, max_delay=5.0)
    fn = Flaky(*[Transient() for _ in range(7)])
    call_with_retry(policy, fn)
    assert slept == pytest.approx([1.0, 2.0, 4.0, 5.0, 5.0, 5.0, 5.0])


@pytest.mark.parametrize("jitter,expected", [(0.0, 0.5), (0.5, 0.75), (0.999, 0.9995)])
def test_jitter_keeps_between_half_and_full_backoff(jitter, expected):
    policy, _ = make_policy(base_delay=1.0, jitter=lambda: jitter)
    assert policy.delay_for(1) == pytest.approx(expected)
    assert policy.delay_for(3) == pytest.approx(4 * expected)


def test_default_jitter_is_random_and_bounded():
    policy = RetryPolicy(base_delay=2.0, max_delay=2.0)
    delays = {policy.delay_for(1) for _ in range(50)}
    assert all(1.0 <= d < 2.0 for d in delays)
    assert len(delays) > 1


def test_decorator_retries_and_keeps_metadata():
    policy, slept = make_policy()
    calls = []

    @retry(policy)
    def fetch(x, *, y):
        """Fetch something."""
        calls.append((x, y))
        if len(calls) < 3:
            raise Transient()
        return x + y

    assert fetch(1, y=2) == 3
    assert calls == [(1, 2)] * 3 and len(slept) == 2
    assert fetch.__name__ == "fetch" and fetch.__doc__ == "Fetch something."


def test_on_retry_hook_sees_attempt_error_and_delay():
    seen = []
    policy, slept = make_policy(on_retry=lambda n, exc, delay: seen.append((n, type(exc).__name__, delay)))
    call_with_retry(policy, Flaky(Transient(), Transient()))
    assert seen == [(1, "Transient", 1.0), (2, "Transient", 2.0)]
    assert slept == [1.0, 2.0]


def test_keyboard_interrupt_is_never_retried():
    policy, slept = make_policy(retry_on=lambda e: True)
    fn = Flaky(KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        call_with_retry(policy, fn)
    assert fn.calls == 1 and slept == []


def test_single_attempt_policy_never_retries():
    policy, slept = make_policy(attempts=1)
    with pytest.raises(Transient):
        call_with_retry(policy, Flaky(Transient()))
    assert slept == []


def test_with_returns_changed_copy_and_validation():
    policy, _ = make_policy()
    other = policy.with_(attempts=2)
    assert other.attempts == 2 and policy.attempts == 4 and other.retry_on is policy.retry_on
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(base_delay=-1)


def test_default_policy_retries_nothing():
    fn = Flaky(Transient())
    with pytest.raises(Transient):
        call_with_retry(RetryPolicy(sleep=lambda s: None), fn)
    assert fn.calls == 1

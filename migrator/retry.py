"""Retry, written once: `RetryPolicy`, the `@retry(policy)` decorator and `call_with_retry`.

Decides whether and when to try again (exponential backoff, jitter), not what is transient: each caller
passes `retry_on(exc)`, so this imports no library. The policy travels with the call (no global config);
the last exception is re-raised unchanged for the caller to translate."""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

# Defaults sized for object stores and SSH: 5 tries spread over ~15 s ride out a throttling burst or
# a load-balancer restart, yet a store that is really down fails the operation in well under a minute.
DEFAULT_ATTEMPTS = 5
DEFAULT_BASE_DELAY = 0.5  # seconds before the 2nd try; doubles each time
DEFAULT_MAX_DELAY = 8.0  # cap on one wait, so late attempts do not sleep for minutes


def _never(_exc: BaseException) -> bool:
    return False


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry.

    attempts:   total number of calls (1 = no retry).
    base_delay: wait before the second call; doubles per failure ("exponential backoff").
    max_delay:  cap on one wait.
    retry_on:   exc -> True if the failure is transient and the call may be repeated.
    sleep:      the waiting function (tests inject a recorder instead of time.sleep).
    jitter:     returns a float in [0, 1); each wait is scaled into [delay/2, delay) ("equal jitter",
                so many clients hitting the same throttled store do not retry in lockstep, while every
                wait keeps at least half the backoff).
    on_retry:   optional hook(attempt_number, exc, delay) called before each wait (logging, metrics).
    """

    attempts: int = DEFAULT_ATTEMPTS
    base_delay: float = DEFAULT_BASE_DELAY
    max_delay: float = DEFAULT_MAX_DELAY
    retry_on: Callable[[BaseException], bool] = _never
    sleep: Callable[[float], None] = time.sleep
    jitter: Callable[[], float] = field(default=random.random)
    on_retry: Callable[[int, BaseException, float], None] | None = None

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("RetryPolicy.attempts must be >= 1")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("RetryPolicy delays must be >= 0")

    def delay_for(self, failures: int) -> float:
        """Seconds to wait after the `failures`-th failed call (1-based), jitter applied."""
        backoff = min(self.max_delay, self.base_delay * (2 ** (failures - 1)))
        return backoff * (0.5 + self.jitter() / 2)

    def with_(self, **changes: Any) -> RetryPolicy:
        """A copy with some fields changed, e.g. `policy.with_(sleep=fake_sleep)`."""
        return replace(self, **changes)


def call_with_retry(policy: RetryPolicy, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call `fn(*args, **kwargs)`, retrying per `policy`; re-raise the last exception when giving up.

    Only `Exception` subclasses are considered: KeyboardInterrupt and SystemExit always propagate at once.
    """
    failures = 0
    while True:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            failures += 1
            if failures >= policy.attempts or not policy.retry_on(exc):
                raise
            delay = policy.delay_for(failures)
            if policy.on_retry is not None:
                policy.on_retry(failures, exc, delay)
            policy.sleep(delay)


def retry(policy: RetryPolicy) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """Decorator form: `@retry(policy)` makes every call of the function go through `call_with_retry`."""

    def decorate(fn: Callable[P, T]) -> Callable[P, T]:
        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            return call_with_retry(policy, fn, *args, **kwargs)

        return wrapper

    return decorate

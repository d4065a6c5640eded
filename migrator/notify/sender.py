"""The sender process (`python -m migrator.notify.sender`): sends the requests on its stdin, in order.

Only http and https URLs are sent; redirects are not followed (a webhook must not be bounced elsewhere)."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request

from migrator.retry import RetryPolicy, call_with_retry

# A webhook receiver answers in well under a second; 10 s covers a slow one without hanging for long.
TIMEOUT_S = 10
# 4 tries over ~7 s ride out a receiver's restart; a receiver that is down costs at most ~50 s in this
# detached process, never in the operation.
POLICY_ATTEMPTS = 4
POLICY_BASE_DELAY = 1.0


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code >= 500 or exc.code == 429
    return isinstance(exc, (urllib.error.URLError, OSError))


POLICY = RetryPolicy(attempts=POLICY_ATTEMPTS, base_delay=POLICY_BASE_DELAY, retry_on=_transient)


def send(req: dict, policy: RetryPolicy = POLICY) -> int:
    url = req["url"]
    if not url.startswith(("http://", "https://")):
        raise ValueError("only http(s) URLs are sent")
    body = req.get("body")
    request = urllib.request.Request(url, data=body.encode() if body is not None else None,
                                     method=req.get("method", "POST"), headers=req.get("headers") or {})
    request.add_header("User-Agent", "migrator")

    def once() -> int:
        with _OPENER.open(request, timeout=TIMEOUT_S) as resp:
            resp.read(65536)
            return resp.status

    return call_with_retry(policy, once)


def main() -> int:
    """Read requests from stdin (one JSON object a line: method, url, body, headers) and send them in order,
    each with the retry policy and a bounded timeout, until stdin ends. Started detached by
    notify/outbound.Dispatcher, so the operation never waits."""
    failed = 0
    for line in sys.stdin.buffer:
        try:
            req = json.loads(line)
            send(req)
        except Exception:  # noqa: BLE001 - one lost request must not stop the ones after it
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

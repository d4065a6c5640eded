"""notify: what the operator hears about: mail, metrics, events, and the after-command hook.

Details: docs/operations.md (mail, metrics, history) and docs/serve.md (events, pings, webhooks)."""

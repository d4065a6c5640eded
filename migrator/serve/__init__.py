"""serve: `migrator serve`, the HTTP API, live events, dashboard, auth, actions and dependents follow.

See docs/serve.md."""

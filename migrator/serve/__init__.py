"""serve: `migrator serve`, one process with the HTTP API (/api/v1), live events (SSE) and the web
dashboard; auth, actions as `migrator` child processes, the event follower."""

"""SSH to another machine: one connection routine, and a session with migrator on a remote VSN.

The connection (config aliases, keys, agent, strict host keys) serves the ssh:// store and `move`."""

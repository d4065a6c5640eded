"""SSH to another machine: one connection routine (config aliases, keys, agent, strict host keys) used by
the ssh:// store and by `move`, and a session that runs migrator on a remote VSN and streams data to it."""

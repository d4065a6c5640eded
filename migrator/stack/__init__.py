"""stack: what the verbs stand on: topology, quiesce, probes, data dirs, step timing, signature policy."""

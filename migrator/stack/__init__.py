"""stack: what the verbs stand on — topology and container specs, quiesce, probes, data dirs, step timing,
signature policy. Below ops/ (the verbs), above catalog/, plan/, state/ and the engines."""

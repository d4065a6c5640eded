"""notify: what the operator hears about: mail without a storm, Prometheus textfile metrics, and the
after-command hook (history, metrics, failure mail)."""

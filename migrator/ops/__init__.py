"""One module per verb. Ops return results or raise MigratorError subclasses; they never print or exit.
Progress goes through a `report(str)` callback the CLI provides."""

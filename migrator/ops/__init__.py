"""One module per verb: ops return results or raise MigratorError subclasses, never print or exit.

Progress goes through a `report(str)` callback the CLI provides."""

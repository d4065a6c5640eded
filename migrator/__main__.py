"""`python -m migrator` runs the CLI."""

from migrator.cli.app import main

main()

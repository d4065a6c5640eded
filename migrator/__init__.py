"""migrator: deploy, snapshot, restore and move small podman/docker stacks without losing a byte."""

__version__ = "0.3.0"

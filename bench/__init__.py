"""bench: migrator against tar|zstd, restic and borg on the same data, as ratios (see bench/README.md).
Run from the repository root as a package: `python -m bench.run`, `python -m bench.move_bench`."""

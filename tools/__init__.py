"""The scripts behind the Makefile targets, each run from the repository root as `python -m tools.NAME`."""

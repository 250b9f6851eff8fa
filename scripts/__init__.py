"""Benchmarks (bench/), drills (drills/) and developer tools (dev/); setup.sh sets up the venv."""

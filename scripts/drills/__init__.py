"""Fault drills (bounded, loopback only): `python -m scripts.drills.<name>`."""

"""Benchmarks of the two-factor module, and the harness that the scale-out test shares."""

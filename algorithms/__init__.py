"""Trainers, rollout workers, evaluations and benchmarks (each runnable as ``python -m algorithms.<name>``)."""

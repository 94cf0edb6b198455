"""Scoring and validation: checkpoints on any data, known objects, benchmarks."""

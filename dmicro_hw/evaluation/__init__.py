"""Scoring and validation of the instrument: known-object (bead) fits and run validation.

This package may import :mod:`dmicro_hw.simulators` (to score simulated runs against the truth).
"""

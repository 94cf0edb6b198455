"""Scoring, validation and benchmarks of the instrument: known-object (bead) fits, checkpoint
evaluation, and the measurements behind ``dmicro bench`` (optics, acquisition, simulated devices,
device round trips, the paper's method comparison).

This package and the rig seam (:mod:`dmicro_hw.rig`) are the only places that may import
:mod:`dmicro_hw.simulators` (tests/test_import_graph.py checks the whole import graph).
"""

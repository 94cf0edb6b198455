"""Tests of dmicro-hw, laid out like the package: tests/PKG/ holds the tests of dmicro_hw.PKG; the
tests of a top-level module (dmicro_hw/config.py, cli.py, rig.py, …) and of the whole import graph
stay here, beside conftest.py (the shared fixtures)."""

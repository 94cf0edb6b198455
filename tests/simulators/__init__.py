"""Tests of dmicro_hw.simulators."""

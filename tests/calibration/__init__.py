"""Tests of dmicro_hw.calibration."""

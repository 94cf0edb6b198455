"""Tests of dmicro_hw.optics."""

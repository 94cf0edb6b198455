"""Tests of dmicro_hw.data."""

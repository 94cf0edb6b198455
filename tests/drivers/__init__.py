"""Tests of dmicro_hw.drivers."""

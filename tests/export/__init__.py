"""Tests of dmicro_hw.export."""

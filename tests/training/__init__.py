"""Tests of dmicro_hw.training."""

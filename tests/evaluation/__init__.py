"""Tests of dmicro_hw.evaluation."""

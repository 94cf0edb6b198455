"""Tests of dmicro_hw.models."""

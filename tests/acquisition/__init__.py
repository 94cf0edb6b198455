"""Tests of dmicro_hw.acquisition."""

"""Whole-system tests that cross packages: the README's quick path, the soak slice, hostile input
and fuzzed readers, through the real CLI."""

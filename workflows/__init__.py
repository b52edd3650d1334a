"""Durable, deterministic workflow code only: no I/O, no wall clock, no randomness."""

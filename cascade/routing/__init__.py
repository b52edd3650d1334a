"""Optichannel routing: which channel, when, and how long to wait -- pure models, no I/O."""

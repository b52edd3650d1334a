"""Data shapes only: pydantic payloads that cross Temporal, and sqlmodel tables."""

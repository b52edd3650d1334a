"""Experiments in journeys: assignment recording and results (issue 14)."""

"""Audiences: segments compiled to SQL, their membership over time, and broadcasts."""

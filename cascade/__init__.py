"""Cascade: omnichannel customer journeys on Temporal."""

"""cascade/journeys"""

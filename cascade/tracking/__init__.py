"""cascade/tracking"""

"""cascade/events"""

"""cascade/profiles"""

"""cascade/content"""

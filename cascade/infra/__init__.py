"""cascade/infra"""

"""Placeholder replaced by the worker package."""

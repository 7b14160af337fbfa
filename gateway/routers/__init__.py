"""Thin HTTP handlers: authenticate, acquire, forward, account. Logic lives elsewhere."""

"""Secure federated analytics: declarative group-by queries over agencies' tables.

See ``docs/analytics.md``.
"""

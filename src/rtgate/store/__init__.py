"""Persistence: the ``Store`` port and its SQL adapter (SQLite by default, PostgreSQL)."""

"""Persistence: SQL metadata (SQLAlchemy, SQLite or PostgreSQL) and versioned objects."""

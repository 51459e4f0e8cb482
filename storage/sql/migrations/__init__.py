"""Alembic migrations for routeq's SQL store.

Run them with `routeq migrate` (or `storage.sql.engine.migrate`).
"""

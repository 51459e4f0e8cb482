"""Alembic migrations for routeq's SQL store; run them with `routeq migrate` (or `storage.db.migrate`)."""

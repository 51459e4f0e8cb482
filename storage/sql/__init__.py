"""routeq's SQL store (SQLite embedded, PostgreSQL at scale).

Schema, migrations and a room per family of tables; `storage.sql.store.Store` is the way in.
"""

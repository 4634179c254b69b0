"""Alembic environment: each revision executes one file from migrations/ (see prodvec.db.migrate)."""
from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from prodvec.db.connection import database_url, sqlalchemy_url

url = context.config.get_main_option("sqlalchemy.url") or sqlalchemy_url(database_url())
engine = create_engine(url, poolclass=pool.NullPool)
with engine.connect() as connection:
    context.configure(connection=connection, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()

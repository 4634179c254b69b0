"""The active model (spec, dimensions, catalog views) is recorded in the database

Revision ID: 0007
Revises: 0006
"""
from prodvec.db.migrate import execute_sql_file

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_sql_file("0007_active_model.sql")


def downgrade() -> None:
    execute_sql_file("0007_active_model.down.sql")

"""Measured recall and tuned effort per kind of index search

Revision ID: 0006
Revises: 0005
"""
from prodvec.db.migrate import execute_sql_file

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_sql_file("0006_recall_settings.sql")


def downgrade() -> None:
    execute_sql_file("0006_recall_settings.down.sql")

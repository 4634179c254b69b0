"""Searches through the binary-code index: kinds of index search that recall measures and tunes

Revision ID: 0010
Revises: 0009
"""
from prodvec.db.migrate import execute_sql_file

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_sql_file("0010_code_index_recall.sql")


def downgrade() -> None:
    execute_sql_file("0010_code_index_recall.down.sql")

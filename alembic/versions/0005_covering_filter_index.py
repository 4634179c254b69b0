"""The (category, price) index carries the vectors: exact passes read no table pages

Revision ID: 0005
Revises: 0004
"""
from prodvec.db.migrate import execute_sql_file

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_sql_file("0005_covering_filter_index.sql")


def downgrade() -> None:
    execute_sql_file("0005_covering_filter_index.down.sql")

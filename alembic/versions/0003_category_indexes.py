"""Per-category HNSW indexes for searches filtered to one category

Revision ID: 0003
Revises: 0002
"""
from prodvec.db.migrate import execute_sql_file

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_sql_file("0003_category_indexes.sql")


def downgrade() -> None:
    execute_sql_file("0003_category_indexes.down.sql")

"""Denser HNSW graphs (m = 32, ef_construction = 200): no products out of reach

Revision ID: 0004
Revises: 0003
"""
from prodvec.db.migrate import execute_sql_file

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_sql_file("0004_denser_graphs.sql")


def downgrade() -> None:
    execute_sql_file("0004_denser_graphs.down.sql")

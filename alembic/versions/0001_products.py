"""products with an HNSW halfvec column, and the embedding queue

Revision ID: 0001
Revises:
"""
from prodvec.db.migrate import execute_sql_file

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_sql_file("0001_products.sql")


def downgrade() -> None:
    execute_sql_file("0001_products.down.sql")

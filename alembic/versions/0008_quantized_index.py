"""Opt-in HNSW index on binary codes of the vectors (mean-centred), re-ranked exactly

Revision ID: 0008
Revises: 0007
"""
from prodvec.db.migrate import execute_sql_file

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_sql_file("0008_quantized_index.sql")


def downgrade() -> None:
    execute_sql_file("0008_quantized_index.down.sql")

"""products.embedding_coarse: the second vector of PRODVEC_CATALOG_VIEWS=multi

Revision ID: 0002
Revises: 0001
"""
from prodvec.db.migrate import execute_sql_file

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_sql_file("0002_catalog_views.sql")


def downgrade() -> None:
    execute_sql_file("0002_catalog_views.down.sql")

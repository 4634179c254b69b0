"""Several models side by side, one active: blue-green model changes

Revision ID: 0009
Revises: 0008
"""
from prodvec.db.migrate import execute_sql_file

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_sql_file("0009_model_versions.sql")


def downgrade() -> None:
    execute_sql_file("0009_model_versions.down.sql")

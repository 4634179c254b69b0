"""The database: which server (DATABASE_URL or the embedded one), connections, migrations."""
from prodvec.db.connection import connect, database_url

__all__ = ["connect", "database_url"]

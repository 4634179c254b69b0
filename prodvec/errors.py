"""Exception types raised at prodvec's edges. Each message says what to do about it."""
from __future__ import annotations


class ProdvecError(Exception):
    """Base class: the CLI prints these as one line instead of a traceback."""


class ConfigError(ProdvecError):
    """A setting (environment variable, CLI flag) is missing or malformed."""


class DatabaseError(ProdvecError):
    """The database cannot be reached, started or does not have what prodvec needs."""


class DatabaseUnavailable(DatabaseError):
    """The server did not answer (down, restarting, network): worth waiting and retrying."""


class SchemaMismatch(DatabaseError):
    """The database schema does not fit the configured model (e.g. embedding dimensions)."""


class CatalogError(ProdvecError):
    """A catalog file cannot be imported as asked (missing, empty, bad rows under --strict, a
    refused sync): nothing of it is written."""


class CatalogRowError(CatalogError):
    """One catalog row is invalid; the importer reports it with its line number and skips it.
    Raised for a whole file when the line is its header (line 1) or an unknown JSON key."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"line {line}: {reason}")
        self.line = line
        self.reason = reason


class WeightsUnavailable(ProdvecError):
    """Model weights could not be loaded (no network, bad path, missing extra)."""


class ImageError(ProdvecError):
    """An image could not be turned into pixels.

    ``permanent`` errors (not an image, corrupt, too large) fail the product at once;
    transient ones (timeouts, 5xx, a local file not there yet) are retried with backoff.
    """

    def __init__(self, reason: str, *, permanent: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent


class QueryError(ProdvecError):
    """A search query cannot be answered as asked (e.g. text query on an image-only encoder)."""

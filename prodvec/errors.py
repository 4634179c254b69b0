"""Exception types raised at prodvec's edges. Each message says what to do about it."""
from __future__ import annotations

from typing import Literal


class ProdvecError(Exception):
    """Base class: the CLI prints these as one line instead of a traceback."""


class ConfigError(ProdvecError):
    """A setting (environment variable, CLI flag) is missing or malformed."""


class ModelMismatch(ConfigError):
    """PRODVEC_MODEL or PRODVEC_CATALOG_VIEWS name another model than the catalog's active one
    (recorded in the database): its vectors and this process's would be compared meaninglessly."""


class DatabaseError(ProdvecError):
    """The database cannot be reached, started or does not have what prodvec needs."""


class DatabaseUnavailable(DatabaseError):
    """The server did not answer (down, restarting, network): worth waiting and retrying."""


class ModelChanged(ModelMismatch):
    """The catalog's active model changed (`prodvec model activate`) after this process loaded
    its encoder: query vectors must be made again with the active model."""

    def __init__(self, message: str, *, spec: str, catalog_views: str) -> None:
        super().__init__(message)
        self.spec = spec  # the model active where the search ran
        self.catalog_views = catalog_views


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
    """Model weights could not be loaded (no network, bad path, missing extra). The message says
    how to set up a model that loads; ``reason`` says only what went wrong, for where that advice
    does not fit (a catalog's model that one machine cannot load)."""

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message


#: What went wrong with an image, set where it is raised: a small fixed set (the worker's
#: metrics count failures by it; the reason text holds the paths and URLs).
ImageFailure = Literal[
    "missing_file",  # a local file that is not there (yet)
    "no_permission",  # a local file that may not be read
    "read_error",  # a local file that could not be read (I/O error, stale mount)
    "unsupported_location",  # a directory, an unknown scheme, a malformed URL
    "unreachable",  # connection refused, DNS, TLS
    "timeout",  # the fetch took longer than its deadline
    "connection",  # reset or cut off mid-response
    "http_4xx",  # the server refused the image (404, 403, ... and 408/429, which are retried)
    "http_5xx",  # the server failed
    "bad_redirect",  # too many redirects, one without a target or to a non-http(s) URL
    "too_large",  # more bytes or pixels than the limits
    "not_an_image",  # no decoder recognises the data
    "corrupt",  # an image format, but truncated or broken
    "unexpected",  # an exception no stage expected (a bug): the product fails, the worker goes on
]


class ImageError(ProdvecError):
    """An image could not be turned into pixels: ``kind`` says what went wrong.

    ``permanent`` errors (not an image, corrupt, too large) fail the product at once;
    transient ones (timeouts, 5xx, a local file not there yet) are retried with backoff.
    """

    def __init__(self, reason: str, *, kind: ImageFailure, permanent: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind: ImageFailure = kind
        self.permanent = permanent


class QueryError(ProdvecError):
    """A search query cannot be answered as asked (e.g. text query on an image-only encoder)."""

"""Stage 1: fetch an image's bytes from a local path, a file:// URL or an http(s):// URL.

Fetching is bounded (total time, size, redirects) so one bad URL cannot stall a batch. Errors
are ImageError with their kind, permanent or transient, so the queue knows whether to retry.
"""
from __future__ import annotations

import http.client
import time
import urllib.error
import urllib.request
from email.message import Message
from pathlib import Path
from typing import IO
from urllib.parse import unquote, urljoin, urlsplit

from prodvec.errors import ImageError, ImageFailure

MAX_IMAGE_BYTES = 50 * 1024 * 1024
FETCH_TIMEOUT_SECONDS = 15.0
MAX_REDIRECTS = 3
_REDIRECT_CODES = (301, 302, 303, 307, 308)
_CHUNK_BYTES = 64 * 1024


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Hand every 3xx back as an HTTPError: _fetch_url follows redirects itself, checking each hop."""

    def redirect_request(
        self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str, headers: Message, newurl: str
    ) -> urllib.request.Request | None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def load_bytes(image: str, *, max_bytes: int = MAX_IMAGE_BYTES, timeout: float = FETCH_TIMEOUT_SECONDS) -> bytes:
    scheme = urlsplit(image).scheme.lower()
    if scheme in ("http", "https"):
        return _fetch_url(image, max_bytes=max_bytes, timeout=timeout)
    if scheme == "file":
        return _read_file(Path(unquote(urlsplit(image).path)), max_bytes)
    if scheme and len(scheme) > 1:  # one letter is a Windows drive, not a scheme
        raise ImageError(f"unsupported image location scheme {scheme!r}: use a path, file:// or http(s)://",
                         kind="unsupported_location", permanent=True)
    return _read_file(Path(image), max_bytes)


def _read_file(path: Path, max_bytes: int) -> bytes:
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise ImageError(f"image file is {size} bytes, over the {max_bytes}-byte limit", kind="too_large",
                             permanent=True)
        return path.read_bytes()
    except FileNotFoundError:
        # It may still be on its way (uploads, syncs): retried with backoff.
        raise ImageError(f"image file not found: {path}", kind="missing_file", permanent=False) from None
    except IsADirectoryError:
        raise ImageError(f"image path is a directory: {path}", kind="unsupported_location", permanent=True) from None
    except PermissionError:
        raise ImageError(f"no permission to read image file: {path}", kind="no_permission", permanent=True) from None
    except OSError as exc:  # I/O error, stale network mount: may pass
        raise ImageError(f"cannot read image file {path}: {exc}", kind="read_error", permanent=False) from None


def _fetch_url(url: str, *, max_bytes: int, timeout: float) -> bytes:
    # One deadline for the whole fetch, redirects included: a per-socket-operation timeout
    # alone would let a server dripping a byte at a time hold a decode thread for hours.
    deadline = time.monotonic() + timeout
    requested = url
    for _ in range(MAX_REDIRECTS + 1):
        request = urllib.request.Request(url, headers={"User-Agent": "prodvec/0.1"})
        try:
            with _OPENER.open(request, timeout=_time_left(deadline, timeout, url)) as response:
                return _read_body(response, url, max_bytes=max_bytes, deadline=deadline, timeout=timeout)
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code not in _REDIRECT_CODES:
                transient = exc.code >= 500 or exc.code in (408, 429)
                raise ImageError(f"HTTP {exc.code} fetching {url}", kind="http_5xx" if exc.code >= 500 else "http_4xx",
                                 permanent=not transient) from None
            url = _redirect_target(url, exc.headers.get("Location"))
        except urllib.error.URLError as exc:  # refused, DNS, TLS: the host may come back
            kind: ImageFailure = "timeout" if isinstance(exc.reason, TimeoutError) else "unreachable"
            raise ImageError(f"cannot fetch {url}: {exc.reason}", kind=kind, permanent=False) from None
        except (ValueError, http.client.InvalidURL) as exc:
            raise ImageError(f"invalid image URL {url!r}: {exc}", kind="unsupported_location", permanent=True) from None
        except (OSError, http.client.HTTPException) as exc:  # timeout, reset, cut-off response
            kind = "timeout" if isinstance(exc, TimeoutError) else "connection"
            raise ImageError(f"cannot fetch {url}: {str(exc) or type(exc).__name__}", kind=kind,
                             permanent=False) from None
    raise ImageError(f"too many redirects (over {MAX_REDIRECTS}) fetching {requested}", kind="bad_redirect",
                     permanent=True)


def _time_left(deadline: float, timeout: float, url: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise ImageError(f"fetching {url} took longer than {timeout:g} s", kind="timeout", permanent=False)
    return left


def _redirect_target(url: str, location: str | None) -> str:
    if not location:
        raise ImageError(f"redirect without a Location header fetching {url}", kind="bad_redirect", permanent=True)
    target = urljoin(url, location)
    if urlsplit(target).scheme.lower() not in ("http", "https"):
        raise ImageError(f"redirect from {url} to a non-http(s) URL refused: {target}", kind="bad_redirect",
                         permanent=True)
    return target


def _read_body(
    response: http.client.HTTPResponse, url: str, *, max_bytes: int, deadline: float, timeout: float
) -> bytes:
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise ImageError(f"image at {url} is {declared} bytes, over the {max_bytes}-byte limit", kind="too_large",
                         permanent=True)
    body = bytearray()
    while chunk := response.read1(_CHUNK_BYTES):
        body += chunk
        if len(body) > max_bytes:  # Content-Length missing or wrong: count what arrives
            raise ImageError(f"image at {url} is over the {max_bytes}-byte limit", kind="too_large", permanent=True)
        _time_left(deadline, timeout, url)
    if declared.isdigit() and len(body) < int(declared):
        # read1 reports a dropped connection as a short body; a retry may get it all.
        raise ImageError(f"connection closed after {len(body)} of {declared} bytes from {url}", kind="connection",
                         permanent=False)
    return bytes(body)

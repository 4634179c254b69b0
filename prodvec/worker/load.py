"""Stage 1: fetch an image's bytes from a local path, a file:// URL or an http(s):// URL.

Fetching is bounded (timeout, size, redirects) so one bad URL cannot stall a batch. Errors
are ImageError, permanent or transient, so the queue knows whether to retry.
"""
from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlsplit

from prodvec.errors import ImageError

MAX_IMAGE_BYTES = 50 * 1024 * 1024
FETCH_TIMEOUT_SECONDS = 15.0
MAX_REDIRECTS = 3


class _BoundedRedirects(urllib.request.HTTPRedirectHandler):
    max_redirections = MAX_REDIRECTS

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        if urlsplit(newurl).scheme not in ("http", "https"):
            raise ImageError(f"redirect to a non-http(s) URL: {newurl}", permanent=True)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_BoundedRedirects)


def load_bytes(image: str, *, max_bytes: int = MAX_IMAGE_BYTES, timeout: float = FETCH_TIMEOUT_SECONDS) -> bytes:
    scheme = urlsplit(image).scheme.lower()
    if scheme in ("http", "https"):
        return _fetch_url(image, max_bytes=max_bytes, timeout=timeout)
    if scheme == "file":
        return _read_file(Path(unquote(urlsplit(image).path)), max_bytes)
    if scheme and len(scheme) > 1:  # one letter is a Windows drive, not a scheme
        raise ImageError(f"unsupported image location scheme {scheme!r}: use a path, file:// or http(s)://", permanent=True)
    return _read_file(Path(image), max_bytes)


def _read_file(path: Path, max_bytes: int) -> bytes:
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise ImageError(f"image file is {size} bytes, over the {max_bytes}-byte limit", permanent=True)
        return path.read_bytes()
    except FileNotFoundError:
        # It may still be on its way (uploads, syncs): retried with backoff.
        raise ImageError(f"image file not found: {path}", permanent=False) from None
    except IsADirectoryError:
        raise ImageError(f"image path is a directory: {path}", permanent=True) from None
    except PermissionError:
        raise ImageError(f"no permission to read image file: {path}", permanent=True) from None


def _fetch_url(url: str, *, max_bytes: int, timeout: float) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "prodvec/0.1"})
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise ImageError(f"image is {declared} bytes, over the {max_bytes}-byte limit", permanent=True)
            data = response.read(max_bytes + 1)
    except urllib.error.HTTPError as exc:
        transient = exc.code >= 500 or exc.code in (408, 429)
        if exc.code in (301, 302, 303, 307, 308):
            reason = f"too many redirects fetching {url}"
        else:
            reason = f"HTTP {exc.code} fetching {url}"
        raise ImageError(reason, permanent=not transient) from None
    except urllib.error.URLError as exc:
        raise ImageError(f"cannot fetch {url}: {exc.reason}", permanent=False) from None
    except (TimeoutError, ConnectionError, OSError) as exc:
        raise ImageError(f"cannot fetch {url}: {exc}", permanent=False) from None
    if len(data) > max_bytes:
        raise ImageError(f"image at {url} is over the {max_bytes}-byte limit", permanent=True)
    return data

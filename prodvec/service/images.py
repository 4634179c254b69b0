"""Photos at the service's edge: uploaded or fetched query photos, and product thumbnails.

A query photo is judged by its content, never its name: the first bytes must open as one of
the common photo formats (PIL's other decoders stay out of reach), and its pixel count is
checked before anything is decompressed (a decompression bomb is refused with 413). Decoding
itself is prodvec's (``prodvec.images.decode``), so uploads become the same RGB images the
worker makes of product photos.

Thumbnails of product photos (whatever their source: path, file://, URL) are made once per
(photo, product update) and kept in a small in-memory LRU; their ETag names exactly that, so a
revalidation costs no image work at all.
"""
from __future__ import annotations

import hashlib
import io
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote

from PIL import Image, UnidentifiedImageError

from prodvec.errors import ImageError
from prodvec.images.decode import MAX_PIXELS, decode
from prodvec.images.load import load_bytes
from prodvec.service.errors import BadRequest, CorruptImage, FetchFailed, TooLarge, UnsupportedMedia

#: Formats a query photo may have (content, not file name). PIL's rarer decoders (EPS calls
#: Ghostscript, for one) are not offered to strangers' bytes.
PHOTO_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")  # JPEG opens MPO too
#: How each of them starts. Bytes that start so but do not open are a damaged photo (422),
#: not a file of another kind (415): the sender needs to send it again, not convert it.
_SIGNATURES = {
    "JPEG": (b"\xff\xd8\xff",), "PNG": (b"\x89PNG\r\n\x1a\n",), "GIF": (b"GIF87a", b"GIF89a"),
    "BMP": (b"BM",), "TIFF": (b"II*\x00", b"MM\x00*"),
}
_SEND = "send a JPEG, PNG, WebP, GIF, BMP or TIFF image"
#: JPEG decodes at up to 1/8 scale per side (decode's draft): 64× fewer pixels in memory.
_JPEG_DRAFT_SHRINK = 64
THUMBNAIL_PX = 320
THUMBNAIL_CACHE_ENTRIES = 1024


def query_photo(data: bytes, *, target_size: int, source: str = "the uploaded file") -> Image.Image:
    """Upload or fetched bytes → an RGB image ready for the encoder; 400/413/415/422 with what to do."""
    if not data:
        raise BadRequest(f"{source} is empty (0 bytes): {_SEND}")
    try:
        with Image.open(io.BytesIO(data), formats=PHOTO_FORMATS) as probe:
            width, height, kind = probe.width, probe.height, probe.format
    except Image.DecompressionBombError:
        raise TooLarge(
            f"{source} would decompress to far more pixels than a photo has (a decompression bomb): "
            f"send a photo under {MAX_PIXELS // 1_000_000} megapixels"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        started_as = _format_by_signature(data)
        if started_as:
            raise CorruptImage(
                f"the image is truncated or corrupt: {source} ({len(data)} bytes) starts as a {started_as} file, "
                "but its header cannot be read: send the complete file, or another photo"
            ) from None
        raise UnsupportedMedia(f"{source} is not a photo this server reads (whatever its name says): {_SEND}") from None
    limit = MAX_PIXELS * (_JPEG_DRAFT_SHRINK if kind in ("JPEG", "MPO") else 1)
    if width * height > limit:
        raise TooLarge(
            f"{source} is {width}x{height} pixels, over this server's {limit // 1_000_000}-megapixel limit "
            "(a decompression-bomb guard): send a smaller photo"
        )
    try:
        return decode(data, target_size=target_size)
    except ImageError as exc:
        if exc.kind == "too_large":
            raise TooLarge(f"{source}: {exc.reason}: send a smaller photo") from None
        if exc.kind == "not_an_image":
            raise UnsupportedMedia(f"{source} is not a photo this server reads: {_SEND}") from None
        # decode's reason already starts "truncated or corrupt image: "; PIL's own words follow.
        detail = exc.reason.removeprefix("truncated or corrupt image: ")
        raise CorruptImage(
            f"the image is truncated or corrupt: {source} is a {kind} whose pixels cannot be decoded ({detail}): "
            "send the complete file, or another photo"
        ) from None


def _format_by_signature(data: bytes) -> str | None:
    """The photo format ``data`` starts as, by its first bytes alone; None: none of PHOTO_FORMATS."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return next((name for name, starts in _SIGNATURES.items() if data.startswith(starts)), None)


def thumbnail_etag(image: str, updated_at: datetime) -> str:
    """Names the thumbnail of this photo as of this product update (strong ETag, quoted)."""
    digest = hashlib.sha256(f"{THUMBNAIL_PX}\n{image}\n{updated_at.isoformat()}".encode()).hexdigest()
    return f'"{digest[:32]}"'


@dataclass
class ThumbnailCache:
    """Thumbnails by ETag, least recently used dropped first; shared by the request threads."""

    entries: int = THUMBNAIL_CACHE_ENTRIES

    def __post_init__(self) -> None:
        self._thumbnails: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, etag: str, make: Callable[[], bytes]) -> bytes:
        with self._lock:
            if etag in self._thumbnails:
                self._thumbnails.move_to_end(etag)
                return self._thumbnails[etag]
        body = make()  # outside the lock: other thumbnails need not wait for this one
        with self._lock:
            self._thumbnails[etag] = body
            while len(self._thumbnails) > self.entries:
                self._thumbnails.popitem(last=False)
        return body


def thumbnail_path(root: str, sku: str) -> str:
    """Where a product's thumbnail is served (``root``: the app's root path behind a proxy)."""
    return f"{root}/images/{quote(sku, safe='')}"


def make_thumbnail(image: str) -> bytes:
    """A product photo (path, file:// or URL) as a JPEG of at most THUMBNAIL_PX a side."""
    try:
        photo = decode(load_bytes(image), target_size=THUMBNAIL_PX)
    except ImageError as exc:
        raise FetchFailed(f"cannot load the product's photo: {exc.reason}") from None
    photo.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    photo.save(out, format="JPEG", quality=85, optimize=True)
    return out.getvalue()

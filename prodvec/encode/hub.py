"""Fetching open_clip weights from the model hub without hanging when the hub cannot be reached.

huggingface_hub retries a failed connection five times with backoff (about 23 s per file, and
open_clip asks for two files: 46 s measured with no network), and it reads its timeouts once, at
import. So probe the hub once with a short timeout; when it does not answer, run the load in
huggingface_hub's offline mode, so weights already in the local cache still load and missing ones
fail at once.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

from huggingface_hub import constants as hub_constants
from huggingface_hub.utils import get_session

PROBE_TIMEOUT_S = 5.0


@contextlib.contextmanager
def hub_or_cache() -> Iterator[str | None]:
    """Run a hub download inside this; it yields why the hub is out of reach (None when it is not)."""
    if hub_constants.HF_HUB_OFFLINE:
        yield "HF_HUB_OFFLINE is set, so only the local model cache is read, and the weights are not in it"
        return
    cause = _probe(hub_constants.ENDPOINT)
    if cause is None:
        yield None
        return
    # Read at call time by huggingface_hub, so setting it here turns every request into an instant
    # cache lookup; restored afterwards so a later load can use the hub once it is back.
    hub_constants.HF_HUB_OFFLINE = True
    try:
        yield (
            f"the model hub {hub_constants.ENDPOINT} is unreachable ({cause}) "
            "and the weights are not in the local cache"
        )
    finally:
        hub_constants.HF_HUB_OFFLINE = False


def _probe(endpoint: str) -> str | None:
    """None when the hub answers at all (any HTTP status); else the short reason it did not."""
    try:
        get_session().head(endpoint, timeout=PROBE_TIMEOUT_S)
    except Exception as err:
        return str(err) or type(err).__name__
    return None

"""prodvec's logging, set up alike in every process that runs its code: the command line, and
each `prodvec serve --workers` process, a fresh interpreter that never ran the command line."""
from __future__ import annotations

import logging


def configure_logging(*, verbose: bool = False, quiet: bool = False) -> None:
    """prodvec's progress (INFO: an index rebuilt, a fallback taken) on stderr by default, its
    details with -v, only warnings with -q; other libraries' logs from WARNING up."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.getLogger("prodvec").setLevel(level)

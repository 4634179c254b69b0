"""Stages 1+2 for one job: load bytes, decode, apply the encoder's transform.

Runs in the decode pool; returns the model-ready tensor or the ImageError that ends the job.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from prodvec.errors import ImageError
from prodvec.queue import Job
from prodvec.worker.decode import decode
from prodvec.worker.encode import Encoder
from prodvec.worker.load import load_bytes


@dataclass(frozen=True)
class Prepared:
    job: Job
    pixels: torch.Tensor | None
    error: ImageError | None


def prepare(job: Job, encoder: Encoder) -> Prepared:
    try:
        image = decode(load_bytes(job.image), target_size=encoder.input_size)
        return Prepared(job, encoder.preprocess(image), None)
    except ImageError as exc:
        return Prepared(job, None, exc)
    except Exception as exc:  # noqa: BLE001 - one odd file must never take the batch down
        return Prepared(job, None, ImageError(f"unexpected error preparing image: {exc!r}", permanent=True))

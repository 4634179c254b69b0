"""Stages 1+2 for claimed batches: load bytes, decode, make the catalog views, apply the
encoder's transform.

Runs ahead of the encoder. Each job ends as model-ready pixels, one image per catalog view of
the worker's view policy, or the ImageError that ends it. On the CPU every
image goes through PIL in a small thread pool (PIL decodes without the GIL). With GPU decoding
the pool only loads bytes and reads headers; plain JPEGs are then decoded a batch at a time on
the GPU (gpu_decode.py) by one thread, while the encoder works on the previous batch, and
everything else still takes the PIL path. The GPU path makes the encoder's own crop only, so a
catalog with other views (MULTI_VIEW: fitted photo, coarse thumbnail) is made with PIL.
"""
from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch

from prodvec.encode import Encoder
from prodvec.encode.robust import crop_keep
from prodvec.errors import ImageError
from prodvec.images.decode import decode
from prodvec.images.load import load_bytes
from prodvec.images.views import SINGLE_VIEW, ViewPolicy
from prodvec.queue import Job
from prodvec.worker.gpu_decode import GpuJpegDecoder, batchable

log = logging.getLogger("prodvec.worker")


@dataclass(frozen=True)
class Prepared:
    job: Job
    pixels: torch.Tensor | None  # C×3×S×S: the encoder's input for each catalog view
    error: ImageError | None


@dataclass(frozen=True)
class _Jpeg:
    """Loaded, and a JPEG the GPU decodes: its bytes wait for the batch decode."""

    job: Job
    data: bytes


def prepare(job: Job, encoder: Encoder, policy: ViewPolicy = SINGLE_VIEW) -> Prepared:
    """The whole PIL path for one job."""
    loaded = _load(job)
    return loaded if isinstance(loaded, Prepared) else _decoded(job, loaded, encoder, policy)


def _load(job: Job) -> bytes | Prepared:
    try:
        return load_bytes(job.image)
    except ImageError as exc:
        return Prepared(job, None, exc)
    except Exception as exc:
        return Prepared(job, None, ImageError(f"unexpected error loading image: {exc!r}", kind="unexpected",
                                              permanent=True))


def _decoded(job: Job, data: bytes, encoder: Encoder, policy: ViewPolicy) -> Prepared:
    try:
        image = decode(data, target_size=encoder.input_size)
        views = policy.catalog_views(image, crop_keep(encoder))
        pixels = torch.stack([encoder.preprocess(view) for view in views])
        return Prepared(job, pixels, None)
    except ImageError as exc:
        return Prepared(job, None, exc)
    except Exception as exc:
        return Prepared(job, None, ImageError(f"unexpected error preparing image: {exc!r}", kind="unexpected",
                                              permanent=True))


class PreparingBatch:
    """A claimed batch on its way through stages 1+2."""

    def __init__(self, per_job: list[Future[Prepared | _Jpeg]], whole: Future[list[Prepared]] | None) -> None:
        self._per_job = per_job
        self._whole = whole

    def result(self) -> list[Prepared]:
        """The batch in claim order, once every job is ready."""
        if self._whole is not None:
            return self._whole.result()
        return [future.result() for future in self._per_job]  # type: ignore[misc]  # no _Jpeg without GPU

    def cancel(self) -> None:
        for future in self._per_job:
            future.cancel()
        if self._whole is not None:
            self._whole.cancel()


class Preparer:
    """Prepares claimed batches ahead of the encoder, as ``policy``'s catalog views.
    ``gpu_decode``: None = when the encoder runs on CUDA; True also works on the CPU
    (torchvision's libjpeg path), for tests."""

    def __init__(
        self, encoder: Encoder, *, threads: int, gpu_decode: bool | None = None, policy: ViewPolicy = SINGLE_VIEW
    ) -> None:
        self.encoder = encoder
        self.policy = policy
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="prodvec-decode")
        self._gpu = GpuJpegDecoder.for_encoder(encoder, gpu_decode, encoder_crop_only=policy.catalog_is_plain_photo)
        if self._gpu is None and GpuJpegDecoder.for_encoder(encoder, gpu_decode) is not None:
            log.warning("catalog views (%s) are made with PIL: decoding with PIL, not on the GPU",
                        ", ".join(policy.catalog_view_names))
        elif self._gpu is None and gpu_decode:
            log.warning("%s's preprocess has steps the GPU decoder cannot redo: decoding with PIL", encoder.spec)
        # One thread: batches decode on the GPU in claim order, overlapping the encoder.
        self._gpu_thread = ThreadPoolExecutor(1, thread_name_prefix="prodvec-gpu-decode") if self._gpu else None

    def submit(self, jobs: list[Job]) -> PreparingBatch:
        if self._gpu_thread is None:
            return PreparingBatch([self._pool.submit(prepare, job, self.encoder, self.policy) for job in jobs], None)
        per_job = [self._pool.submit(self._load_and_sort, job) for job in jobs]
        return PreparingBatch(per_job, self._gpu_thread.submit(self._finish_on_gpu, per_job))

    def close(self) -> None:
        self._pool.shutdown(cancel_futures=True)
        if self._gpu_thread is not None:
            self._gpu_thread.shutdown(cancel_futures=True)

    def _load_and_sort(self, job: Job) -> Prepared | _Jpeg:
        loaded = _load(job)
        if isinstance(loaded, Prepared):
            return loaded
        return _Jpeg(job, loaded) if batchable(loaded) else _decoded(job, loaded, self.encoder, self.policy)

    def _finish_on_gpu(self, per_job: list[Future[Prepared | _Jpeg]]) -> list[Prepared]:
        items = [future.result() for future in per_job]
        jpegs = [item for item in items if isinstance(item, _Jpeg)]
        try:
            pixels = self._gpu.decode([item.data for item in jpegs]) if jpegs else []  # type: ignore[union-attr]
        except Exception:
            log.exception("GPU decode failed for a batch of %d JPEGs; decoding them with PIL", len(jpegs))
            pixels = [None] * len(jpegs)
        on_gpu = iter(pixels)
        return [item if isinstance(item, Prepared) else self._finish(item, next(on_gpu)) for item in items]

    def _finish(self, jpeg: _Jpeg, pixels: torch.Tensor | None) -> Prepared:
        if pixels is not None:
            return Prepared(jpeg.job, pixels[None], None)  # the one catalog view: the photo as cropped
        # The GPU decoder rejected it: PIL decodes it, or says what is wrong with it.
        return _decoded(jpeg.job, jpeg.data, self.encoder, self.policy)

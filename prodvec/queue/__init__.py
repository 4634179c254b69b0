"""The embedding queue: jobs fed by triggers on products, claimed under leases by workers."""
from prodvec.queue.jobs import (
    CHANNEL,
    Claim,
    Failure,
    Job,
    QueueStatus,
    claim,
    fail,
    failures,
    release,
    retry_failed,
    retry_later,
    status,
    write_back,
)

__all__ = [
    "CHANNEL",
    "Claim",
    "Failure",
    "Job",
    "QueueStatus",
    "claim",
    "fail",
    "failures",
    "release",
    "retry_failed",
    "retry_later",
    "status",
    "write_back",
]

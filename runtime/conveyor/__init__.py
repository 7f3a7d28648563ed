"""Conveyor: a lease-based Redis job queue for Python teams on Kubernetes."""

from .aio import AsyncJob, AsyncQueue
from .context import JobContext, current_job
from .errors import (
    ConveyorError,
    ForbiddenFunction,
    InvalidArgument,
    InvalidFunction,
    InvalidJobId,
    InvalidQueueName,
    InvalidTransition,
    JobCanceled,
    JobExists,
    JobFailed,
    MalformedJob,
    NoSuchJob,
    PickleRefused,
    ProgressError,
    RedisFull,
    SerializationError,
    WaitTimeout,
)
from .flows import chain, group
from .job import DEFAULT_FAILURE_TTL, DEFAULT_RESULT_TTL, Attempt, ExcInfo, Job, JobStatus, Progress
from .limits import Limits, Rate
from .periodic import CronJob, cron
from .queue import EnqueueData, Queue
from .retry import Backoff, Retry, RetryLater
from .settings import WorkerSettings

try:
    from importlib.metadata import version as _version

    __version__ = _version("conveyor")
except Exception:  # running from a source tree without an install
    __version__ = "0+unknown"

__all__ = [
    "AsyncJob",
    "AsyncQueue",
    "Attempt",
    "Backoff",
    "CronJob",
    "JobContext",
    "Limits",
    "Rate",
    "Retry",
    "RetryLater",
    "chain",
    "cron",
    "current_job",
    "group",
    "DEFAULT_FAILURE_TTL",
    "DEFAULT_RESULT_TTL",
    "ConveyorError",
    "EnqueueData",
    "ExcInfo",
    "ForbiddenFunction",
    "InvalidArgument",
    "InvalidFunction",
    "InvalidJobId",
    "InvalidQueueName",
    "InvalidTransition",
    "Job",
    "JobCanceled",
    "JobExists",
    "JobFailed",
    "MalformedJob",
    "RedisFull",
    "JobStatus",
    "NoSuchJob",
    "PickleRefused",
    "Progress",
    "ProgressError",
    "Queue",
    "SerializationError",
    "WaitTimeout",
    "WorkerSettings",
]

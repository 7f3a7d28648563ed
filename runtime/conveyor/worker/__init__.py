"""The worker runtime: leases jobs from Redis and runs them."""

from .worker import Worker

__all__ = ["Worker"]

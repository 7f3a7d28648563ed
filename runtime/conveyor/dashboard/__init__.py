"""A web dashboard for Conveyor: queues, workers, jobs, their tracebacks, and actions on them.

``conveyor dashboard`` serves it; :func:`create_app` gives the ASGI app to mount in your own
(Starlette, FastAPI: ``app.mount("/jobs", create_app(redis.Redis(...)))``). Needs the
``dashboard`` extra (``pip install "conveyor[dashboard]"``).
"""

from .app import Settings, create_app
from .security import Access

__all__ = ["Access", "Settings", "create_app"]

# syntax=docker/dockerfile:1
# One image for the operator, the workers and the web dashboard:
#   conveyor-operator              the Kubernetes operator (kopf), run by the Helm chart
#   conveyor worker -q QUEUES ...  a worker, run by the operator for each JobQueue
#   conveyor dashboard             the web dashboard, run by the Helm chart (webDashboard)
#
#   docker build -t conveyor:0.1.0 .
#
# Add your job code by building FROM it (see "On Kubernetes" in README.md):
#   FROM conveyor:0.1.0
#   USER root
#   COPY requirements.txt /tmp/requirements.txt
#   RUN pip install --no-cache-dir -r /tmp/requirements.txt
#   COPY myapp/ /app/myapp/
#   USER 10001
# /app is on PYTHONPATH, so jobs enqueued as "myapp.tasks:send_email" import.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: install conveyor[operator,dashboard] into a virtualenv --------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/conveyor
WORKDIR /src
COPY pyproject.toml README.md ./
COPY runtime/ runtime/
COPY operator/ operator/
RUN /opt/conveyor/bin/pip install ".[operator,dashboard]" \
 && /opt/conveyor/bin/conveyor --help >/dev/null \
 && /opt/conveyor/bin/conveyor dashboard --help >/dev/null \
 && /opt/conveyor/bin/python -c "import conveyor.dashboard.app, uvicorn, starlette.formparsers as f; assert f.multipart" \
 && test -x /opt/conveyor/bin/conveyor-operator \
 && /opt/conveyor/bin/python -c "import conveyor_operator.handlers"

# --- runtime: the virtualenv on a clean slim image, non-root -------------------------------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="conveyor" \
      org.opencontainers.image.description="Conveyor job queue: workers (conveyor worker), the Kubernetes operator (conveyor-operator) and the web dashboard (conveyor dashboard)" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 conveyor \
 && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home --shell /usr/sbin/nologin conveyor \
 && mkdir -p /app && chown 10001:10001 /app
COPY --from=build /opt/conveyor /opt/conveyor
# HOME=/tmp: the pods run with a read-only root filesystem and only /tmp writable.
ENV PATH=/opt/conveyor/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp
WORKDIR /app
USER 10001:10001
# 9750: a worker's /metrics, /healthz, /readyz; 8080: the operator's /healthz; 9181: the dashboard.
EXPOSE 9750 8080 9181
CMD ["conveyor", "worker"]

"""The Conveyor Kubernetes operator (kopf): reconciles JobQueue resources into worker fleets.

Modules:
    crd         the JobQueue CRD as data (crds/jobqueues.conveyor.dev.yaml is generated from it)
    openapi     the CRD schema's node helpers
    reserved    worker env and flags the operator owns: the CEL rules and checks refusing them
    spec        the CRD's defaults applied, and Python equivalents of its schema bounds and CEL rules
    builders    pure functions: JobQueue -> Deployment, ConfigMap, Service, PDB, ServiceMonitor
    k8s         the one module that talks to the API (server-side apply, status, Secrets), and the
                credentials kopf logs in with too (one client stack: aiohttp on kopf's loop)
    status      metav1.Condition bookkeeping and queue depth read from Redis
    autoscale   pure: demand samples + time + spec -> desired replicas and reason
    scaler      the autoscaler's I/O: demand polled, replicas applied, pods ranked, HPAs respected
    tlsfiles    private files for the TLS Secrets the operator reads queue depth with
    redis_access  a JobQueue's Redis URL and TLS files from its Secrets, and its kept Redis client
    reconcile   one reconcile pass, shared by every handler; the resync's cheap refresh
    handlers    thin kopf handlers (startup/login/cleanup, create/update/resume, the indexes, the watch)
    state       the operator's running state: made at startup, kept in kopf's memo, closed at cleanup
    watch       owned objects and other autoscalers watched: a change reconciles its JobQueue
    fleet       peering of several replicas (with leader)
    leader      which replica is active, from kopf's peering
    metrics     the operator's Prometheus metrics and their endpoint
    pods        worker pods lost: their workers' jobs released at once
    resync      the operator-level resync (Redis only) and autoscaling loops (no per-JobQueue timer, so no finalizer)
    settings    settings from the environment
    __main__    ``python -m conveyor_operator``: ``kopf run`` with kopf's liveness endpoint

The runtime (``conveyor``) never imports this package; this package reads ``conveyor.keys``,
``conveyor.connection`` and ``conveyor.validation``. Workers are configured through the
``conveyor worker`` command line only, with the Redis URL in ``CONVEYOR_REDIS_URL`` and the
TLS files named by ``CONVEYOR_REDIS_CA_FILE`` / ``_CERT_FILE`` / ``_KEY_FILE``.
"""

#!/usr/bin/env bash
# Conveyor on a local kind cluster, end to end. Needs docker, kind (v0.33.0, for the node
# image kind-config.yaml pins), kubectl and helm.
#
#   ./scripts/kind-demo.sh                      # cluster, image, chart, Redis, a JobQueue, 20 jobs run
#   ./scripts/kind-demo.sh --dry-run            # print every command it would run; needs none of the tools
#   ./scripts/kind-demo.sh --print-manifests    # print the manifests it applies (namespace filled in)
#   JOBS=100 NAMESPACE=team-a ./scripts/kind-demo.sh
#   kind delete cluster --name conveyor         # when done
#
# Every step is idempotent: run it again after a failure or a code change (the image is
# rebuilt, reloaded and the operator and workers restarted). Each run enqueues its jobs under
# a run ID of its own and waits for those jobs only. Every wait has a timeout; on failure the
# script prints what to look at and exits non-zero.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

CLUSTER="${CLUSTER:-conveyor}"           # must match metadata "name" in kind-config.yaml
CONTEXT="kind-${CLUSTER}"
IMAGE=conveyor:kind                      # image.repository and image.tag in examples/kind/values.yaml
RELEASE=conveyor
OPERATOR_NAMESPACE="${OPERATOR_NAMESPACE:-conveyor-system}"
NAMESPACE="${NAMESPACE:-conveyor-demo}"  # Redis, the JobQueue and its workers
JQ=demo                                  # metadata.name in examples/kind/jobqueue.yaml
JOBS="${JOBS:-20}"
TIMEOUT_SECONDS="${TIMEOUT_SECONDS:-180}"
RUN_ID="${RUN_ID:-run$(date +%s)-$$}"
POD_WAIT_SECONDS="${POD_WAIT_SECONDS:-60}"  # for a Running worker pod to exec into
EXEC_TRIES="${EXEC_TRIES:-4}"                # kubectl exec attempts, each on a freshly picked pod
DRY_RUN=0

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "kind-demo: $*" >&2; exit 1; }

# The JobQueue as applied: its Redis URL names the namespace (the operator, in
# OPERATOR_NAMESPACE, reads the queue depth from it too, where a bare "redis" host would not
# resolve), so examples/kind/jobqueue.yaml carries ${NAMESPACE} and this fills it in.
render_jobqueue() {
  local jobqueue
  jobqueue="$(<examples/kind/jobqueue.yaml)"
  printf '%s\n' "${jobqueue//\$\{NAMESPACE\}/$NAMESPACE}"
}
render_manifests() {
  cat examples/kind/redis.yaml
  printf -- '---\n'
  render_jobqueue
}

step() { printf '\n==> %s\n' "$*" >&2; }
# run CMD...: run it, or under --dry-run print it (shell-quoted, one line) and succeed.
run() {
  if [ "$DRY_RUN" -eq 1 ]; then
    local out
    printf -v out '%q ' "$@"
    echo "${out% }"
    return 0
  fi
  "$@"
}
k() { run kubectl --context "$CONTEXT" -n "$NAMESPACE" "$@"; }
kop() { run kubectl --context "$CONTEXT" -n "$OPERATOR_NAMESPACE" "$@"; }
need() { command -v "$1" >/dev/null 2>&1 || die "'$1' is not installed ($2)"; }

# What to look at when a wait fails: the operator's log, the JobQueue, the pods and events.
diagnose() {
  [ "$DRY_RUN" -eq 1 ] && return 0
  echo "kind-demo: $* -- what the cluster says:" >&2
  {
    set +e
    # Diagnostics never hang: each call bounded (logs of a deployment otherwise waits 20s for a pod).
    local kd=(kubectl --context "$CONTEXT" --request-timeout=15s)
    echo "--- kubectl -n ${OPERATOR_NAMESPACE} logs deploy/${RELEASE}-operator --tail=40"
    "${kd[@]}" -n "$OPERATOR_NAMESPACE" logs "deploy/${RELEASE}-operator" --tail=40 --pod-running-timeout=3s
    echo "--- kubectl -n ${NAMESPACE} describe jq ${JQ}"
    "${kd[@]}" -n "$NAMESPACE" describe jq "$JQ"
    echo "--- kubectl -n ${NAMESPACE} get pods -o wide"
    "${kd[@]}" -n "$NAMESPACE" get pods -o wide
    echo "--- kubectl -n ${NAMESPACE} get events --sort-by=.lastTimestamp (last 25)"
    "${kd[@]}" -n "$NAMESPACE" get events --sort-by=.lastTimestamp | tail -n 25
    echo "--- kubectl -n ${NAMESPACE} logs deploy/${JQ}-worker -c worker --tail=30"
    "${kd[@]}" -n "$NAMESPACE" logs "deploy/${JQ}-worker" -c worker --tail=30 --pod-running-timeout=3s
  } >&2 2>&1
  cat >&2 <<HINT
kind-demo: FAILED: $*. Look further with:
  kubectl --context ${CONTEXT} -n ${OPERATOR_NAMESPACE} logs deploy/${RELEASE}-operator
  kubectl --context ${CONTEXT} -n ${NAMESPACE} describe jq ${JQ}
  kubectl --context ${CONTEXT} -n ${NAMESPACE} describe pods -l app.kubernetes.io/instance=${JQ}
  kubectl --context ${CONTEXT} -n ${NAMESPACE} get events --sort-by=.lastTimestamp
HINT
  exit 1
}

# A worker pod that is Running and not being deleted (a rollout restart leaves terminating
# pods behind for a while: an exec into one of them fails).
worker_pod() {
  local deadline=$((SECONDS + POD_WAIT_SECONDS)) pod
  while :; do
    pod="$(kubectl --context "$CONTEXT" -n "$NAMESPACE" get pods -l "app.kubernetes.io/instance=${JQ}" \
      -o jsonpath='{range .items[?(@.status.phase=="Running")]}{.metadata.name}{" "}{.metadata.deletionTimestamp}{"\n"}{end}' \
      2>/dev/null | awk 'NF == 1 { print $1; exit }')" || pod=""
    if [ -n "$pod" ]; then echo "$pod"; return 0; fi
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 2
  done
}

# exec_worker CMD...: run CMD in a live worker pod's "worker" container, retried on a
# fresh pod (EXEC_TRIES times) when the pod goes away under it.
exec_worker() {
  if [ "$DRY_RUN" -eq 1 ]; then
    k exec "POD" -c worker -- "$@"
    return 0
  fi
  local try pod
  for ((try = 1; try <= EXEC_TRIES; try++)); do
    pod="$(worker_pod)" || diagnose "no Running worker pod of JobQueue ${JQ} within ${POD_WAIT_SECONDS}s"
    if kubectl --context "$CONTEXT" -n "$NAMESPACE" exec "$pod" -c worker -- "$@"; then
      return 0
    fi
    echo "kind-demo: exec into ${pod} failed (try ${try}/${EXEC_TRIES}); picking a live pod again" >&2
    [ "$try" -eq "$EXEC_TRIES" ] || sleep "$try"
  done
  diagnose "kubectl exec into a worker pod failed ${EXEC_TRIES} times"
}

# kind load docker-image fails on Docker's containerd image store (Docker 29, Docker Desktop):
# "content digest ... not found", kubernetes-sigs/kind#3795. Then: docker save (one platform)
# and kind load image-archive.
load_image() {
  if [ "$DRY_RUN" -eq 1 ]; then
    run kind load docker-image "$IMAGE" --name "$CLUSTER"
    echo "# only if that fails (Docker's containerd image store, kubernetes-sigs/kind#3795):"
    run docker image save --platform PLATFORM -o ARCHIVE "$IMAGE"
    run kind load image-archive ARCHIVE --name "$CLUSTER"
    return 0
  fi
  if kind load docker-image "$IMAGE" --name "$CLUSTER"; then
    return 0
  fi
  echo "kind-demo: 'kind load docker-image' failed (Docker's containerd image store? kubernetes-sigs/kind#3795);" \
    "falling back to docker image save + kind load image-archive" >&2
  local platform archive_dir
  platform="$(docker version -f '{{.Server.Os}}/{{.Server.Arch}}' 2>/dev/null)" || platform=""
  archive_dir="$(mktemp -d)"
  # shellcheck disable=SC2064  # expand archive_dir now: it is local to this function
  trap "rm -rf '${archive_dir}'" EXIT
  # One platform only (the engine's): the attestation manifests a containerd-store build adds
  # are what "content digest ... not found" is about. Docker < 28 has no --platform on save.
  if [ -z "$platform" ] || ! docker image save --platform "$platform" -o "${archive_dir}/image.tar" "$IMAGE"; then
    docker image save -o "${archive_dir}/image.tar" "$IMAGE" || die "docker image save ${IMAGE} failed"
  fi
  kind load image-archive "${archive_dir}/image.tar" --name "$CLUSTER" \
    || die "kind load image-archive failed too; see kubernetes-sigs/kind#3795 (or disable Docker's containerd image store)"
  rm -rf "$archive_dir"
  trap - EXIT
}

# Sourced (tests/chart/test_kind_flow.py runs worker_pod and diagnose against the API
# emulator): the functions only.
[[ "${BASH_SOURCE[0]}" == "$0" ]] || return 0

while [ "$#" -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --print-manifests) render_manifests; exit 0 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument '$1' (try --help)" ;;
  esac
  shift
done
[[ "$JOBS" =~ ^[1-9][0-9]*$ ]] || die "JOBS must be a positive integer, got '${JOBS}'"
[[ "$TIMEOUT_SECONDS" =~ ^[1-9][0-9]*$ ]] || die "TIMEOUT_SECONDS must be a positive integer, got '${TIMEOUT_SECONDS}'"
for var in POD_WAIT_SECONDS EXEC_TRIES; do
  [[ "${!var}" =~ ^[1-9][0-9]*$ ]] || die "${var} must be a positive integer, got '${!var}'"
done
[[ "$NAMESPACE" =~ ^[a-z0-9]([-a-z0-9]*[a-z0-9])?$ ]] || die "NAMESPACE '${NAMESPACE}' is not a valid namespace name"

if [ "$DRY_RUN" -eq 0 ]; then
  need docker "https://docs.docker.com/engine/install/"
  need kind "https://kind.sigs.k8s.io/docs/user/quick-start/#installation (v0.33.0: kind-config.yaml pins its node image)"
  need kubectl "https://kubernetes.io/docs/tasks/tools/"
  need helm "https://helm.sh/docs/intro/install/"
fi

step "1/7 kind cluster '${CLUSTER}' (kind-config.yaml)"
if [ "$DRY_RUN" -eq 1 ]; then
  echo "# only if cluster ${CLUSTER} is missing:"
  run kind create cluster --name "$CLUSTER" --config kind-config.yaml --wait 120s
elif kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  echo "cluster ${CLUSTER} already exists" >&2
else
  run kind create cluster --name "$CLUSTER" --config kind-config.yaml --wait 120s
fi

step "2/7 image ${IMAGE}: docker build, kind load"
run docker build -t "$IMAGE" .
load_image

step "3/7 helm: the CRD and the operator in namespace ${OPERATOR_NAMESPACE} (examples/kind/values.yaml)"
run helm upgrade --install "$RELEASE" charts/conveyor --kube-context "$CONTEXT" \
  --namespace "$OPERATOR_NAMESPACE" --create-namespace -f examples/kind/values.yaml \
  --wait --timeout 3m || diagnose "helm upgrade --install did not finish"
kop rollout restart "deployment/${RELEASE}-operator"   # a second run: pick up the rebuilt image
kop rollout status "deployment/${RELEASE}-operator" --timeout=2m \
  || diagnose "the operator did not roll out within 2m"

step "4/7 namespace ${NAMESPACE}, Redis in it (examples/kind/redis.yaml)"
if [ "$DRY_RUN" -eq 1 ]; then
  echo "# only if namespace ${NAMESPACE} is missing:"
  run kubectl --context "$CONTEXT" create namespace "$NAMESPACE"
elif ! kubectl --context "$CONTEXT" get namespace "$NAMESPACE" >/dev/null 2>&1; then
  run kubectl --context "$CONTEXT" create namespace "$NAMESPACE"
fi
k apply -f examples/kind/redis.yaml
k rollout status deployment/redis --timeout=2m || diagnose "Redis did not become ready within 2m"

step "5/7 JobQueue '${JQ}' (examples/kind/jobqueue.yaml, Redis URL for namespace ${NAMESPACE})"
if [ "$DRY_RUN" -eq 1 ]; then
  echo "# only on a re-run (the workers exist):"
  k rollout restart "deployment/${JQ}-worker"
elif kubectl --context "$CONTEXT" -n "$NAMESPACE" get "deployment/${JQ}-worker" >/dev/null 2>&1; then
  k rollout restart "deployment/${JQ}-worker"   # a second run: pick up the rebuilt image
fi
if [ "$DRY_RUN" -eq 1 ]; then
  k apply -f -   # examples/kind/jobqueue.yaml with ${NAMESPACE} filled in (see --print-manifests)
else
  render_jobqueue | kubectl --context "$CONTEXT" -n "$NAMESPACE" apply -f - \
    || diagnose "kubectl apply of the JobQueue failed (is the CRD installed? step 3)"
fi
k wait --for=condition=Ready "jq/${JQ}" --timeout=3m \
  || diagnose "JobQueue ${JQ} was not Ready within 3m (the operator cannot reach Redis? the workers cannot start?)"
k rollout status "deployment/${JQ}-worker" --timeout=2m \
  || diagnose "the workers of JobQueue ${JQ} did not roll out within 2m"
k get jq "$JQ"
k get deployment,pods -l "app.kubernetes.io/instance=${JQ}"

step "6/7 enqueue ${JOBS} jobs (conveyor.demo_jobs:slow_square), run ID ${RUN_ID}, from inside a worker pod"
# Job IDs are RUN_ID-0 ... RUN_ID-(JOBS-1): the jobs of earlier runs (kept for result_ttl)
# are never counted as this run's.
ENQUEUE_PY='import sys
from conveyor import Queue
run, n = sys.argv[1], int(sys.argv[2])
q = Queue("demo")
for i in range(n):
    q.enqueue("conveyor.demo_jobs:slow_square", i, 0.5, job_id=f"{run}-{i}")
print(f"enqueued {n} jobs on queue demo, IDs {run}-0 ... {run}-{n - 1}")'
STATUS_PY='import sys
from conveyor import Queue
run, n = sys.argv[1], int(sys.argv[2])
q = Queue("demo")
counts = {"finished": 0, "failed": 0, "other": 0}
for i in range(n):
    try:
        s = str(q.fetch_job(f"{run}-{i}").status)
    except Exception:
        s = "missing"
    counts[s if s in counts else "other"] += 1
print(counts["finished"], counts["failed"], counts["other"])'
exec_worker python -c "$ENQUEUE_PY" "$RUN_ID" "$JOBS"

step "7/7 wait for run ${RUN_ID}'s ${JOBS} jobs"
if [ "$DRY_RUN" -eq 1 ]; then
  exec_worker python -c "$STATUS_PY" "$RUN_ID" "$JOBS"
else
  deadline=$((SECONDS + TIMEOUT_SECONDS))
  while :; do
    finished="" failed="" pending=""
    read -r finished failed pending < <(exec_worker python -c "$STATUS_PY" "$RUN_ID" "$JOBS")  # exits here after exec_worker's diagnostics
    [[ "$finished" =~ ^[0-9]+$ && "$failed" =~ ^[0-9]+$ && "$pending" =~ ^[0-9]+$ ]] \
      || diagnose "could not read the state of run ${RUN_ID}'s jobs from a worker pod"
    echo "run ${RUN_ID}: finished ${finished}/${JOBS}, failed ${failed}, not done ${pending}" >&2
    [ "$failed" -eq 0 ] || diagnose "${failed} of run ${RUN_ID}'s jobs failed (conveyor info -q demo in a worker pod)"
    [ "$finished" -lt "$JOBS" ] || break
    [ "$SECONDS" -lt "$deadline" ] || diagnose "run ${RUN_ID}'s jobs did not finish within ${TIMEOUT_SECONDS}s"
    sleep 2
  done
fi
exec_worker conveyor info -q demo
k get jq "$JQ"

[ "$DRY_RUN" -eq 0 ] || exit 0
cat <<DONE

Done: run ${RUN_ID}'s ${JOBS} jobs ran on the '${JQ}' JobQueue's workers (namespace ${NAMESPACE}).
  kubectl --context ${CONTEXT} -n ${NAMESPACE} describe jq ${JQ}                # conditions, events
  kubectl --context ${CONTEXT} -n ${NAMESPACE} logs deployment/${JQ}-worker     # one line per job state change
  kubectl --context ${CONTEXT} -n ${OPERATOR_NAMESPACE} logs deployment/${RELEASE}-operator
  kubectl --context ${CONTEXT} -n ${NAMESPACE} scale jq ${JQ} --replicas=4
  kind delete cluster --name ${CLUSTER}                                  # remove everything
DONE

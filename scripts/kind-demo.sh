#!/usr/bin/env bash
# Conveyor on a local kind cluster, end to end. Needs docker, kind, kubectl and helm.
#
#   ./scripts/kind-demo.sh            # cluster, image, chart, Redis, a JobQueue, 20 jobs run
#   JOBS=100 ./scripts/kind-demo.sh   # more jobs
#   kind delete cluster --name conveyor   # when done
#
# Every step is idempotent: run it again after a failure or a code change (the image is
# rebuilt, reloaded and the operator and workers restarted).
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER=conveyor                 # metadata "name" in kind-config.yaml
CONTEXT="kind-${CLUSTER}"
IMAGE_REPO=conveyor
IMAGE_TAG=kind
IMAGE="${IMAGE_REPO}:${IMAGE_TAG}"
RELEASE=conveyor
NS=conveyor-system
JOBS="${JOBS:-20}"
TIMEOUT_SECONDS="${TIMEOUT_SECONDS:-180}"

# Run inside a worker pod, where CONVEYOR_REDIS_URL is set by the operator.
ENQUEUE_PY='import sys; from conveyor import Queue; q = Queue("demo"); jobs = [q.enqueue("conveyor.demo_jobs:slow_square", n, 0.5) for n in range(int(sys.argv[1]))]; print(f"enqueued {len(jobs)} jobs on queue demo")'
FINISHED_PY='from conveyor import Queue; q = Queue("demo"); print(len(q.finished.job_ids), len(q.failed.job_ids))'

step() { printf '\n==> %s\n' "$*"; }
need() { command -v "$1" >/dev/null 2>&1 || { echo "kind-demo: '$1' is not installed ($2)" >&2; exit 1; }; }
k() { kubectl --context "$CONTEXT" "$@"; }

need docker "https://docs.docker.com/engine/install/"
need kind "https://kind.sigs.k8s.io/docs/user/quick-start/#installation"
need kubectl "https://kubernetes.io/docs/tasks/tools/"
need helm "https://helm.sh/docs/intro/install/"

step "1/7 kind cluster '${CLUSTER}' (kind-config.yaml)"
if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  echo "cluster ${CLUSTER} already exists"
else
  kind create cluster --config kind-config.yaml --wait 120s
fi

step "2/7 image ${IMAGE}: docker build, kind load"
docker build -t "$IMAGE" .
kind load docker-image "$IMAGE" --name "$CLUSTER"

step "3/7 helm install: the CRD and the operator, in namespace ${NS}"
helm upgrade --install "$RELEASE" charts/conveyor --kube-context "$CONTEXT" \
  --namespace "$NS" --create-namespace \
  --set image.repository="$IMAGE_REPO" --set image.tag="$IMAGE_TAG" \
  --wait --timeout 3m
k -n "$NS" rollout restart deployment/"${RELEASE}-operator"   # a second run: pick up the rebuilt image
k -n "$NS" rollout status deployment/"${RELEASE}-operator" --timeout=2m

step "4/7 Redis in namespace default (examples/kind/redis.yaml)"
k apply -f examples/kind/redis.yaml
k rollout status deployment/redis --timeout=2m

step "5/7 JobQueue 'demo' (examples/kind/jobqueue.yaml)"
if k get deployment/demo-worker >/dev/null 2>&1; then
  k rollout restart deployment/demo-worker   # a second run: pick up the rebuilt image
fi
k apply -f examples/kind/jobqueue.yaml
k wait --for=condition=Ready jobqueue/demo --timeout=3m
k get jobqueue demo
k get deployment,pods -l app.kubernetes.io/instance=demo

step "6/7 enqueue ${JOBS} jobs (conveyor.demo_jobs:slow_square) from inside a worker pod"
k exec deployment/demo-worker -c worker -- python -c "$ENQUEUE_PY" "$JOBS"

step "7/7 watch them complete"
deadline=$((SECONDS + TIMEOUT_SECONDS))
while :; do
  read -r finished failed < <(k exec deployment/demo-worker -c worker -- python -c "$FINISHED_PY")
  echo "finished ${finished}/${JOBS}, failed ${failed}"
  [ "$finished" -ge "$JOBS" ] && break
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "kind-demo: jobs did not finish within ${TIMEOUT_SECONDS}s; worker logs:" >&2
    k logs deployment/demo-worker -c worker --tail=50 >&2
    exit 1
  fi
  sleep 2
done
k exec deployment/demo-worker -c worker -- conveyor info -q demo
k get jobqueue demo

cat <<DONE

Done: ${JOBS} jobs ran on the 'demo' JobQueue's workers.
  kubectl --context ${CONTEXT} describe jobqueue demo            # conditions, events
  kubectl --context ${CONTEXT} logs deployment/demo-worker        # one JSON line per job state change
  kubectl --context ${CONTEXT} -n ${NS} logs deployment/${RELEASE}-operator
  kubectl --context ${CONTEXT} scale jobqueue demo --replicas=4
  kind delete cluster --name ${CLUSTER}                           # remove everything
DONE

"""What can be checked here of the kind flow (scripts/kind-demo.sh, kind-config.yaml,
examples/kind/), which needs Docker and kind to run: shellcheck on every script, the pinned
node image against the chart's kubeVersion, the manifests exactly as the script applies
them, its --dry-run commands against the README's steps, and the chart installed into the API
emulator with the script's values file, then the script's manifests applied there with real
kubectl and reconciled by the installed operator."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from cel_admission import admission
from chart_helpers import CHART, KUBE_VERSION, ROOT, ChartCluster, InstalledOperator, helm
from conveyor.embedded import free_port
from op_helpers import Kubectl, wait_for

SCRIPT = ROOT / "scripts" / "kind-demo.sh"
KIND_CONFIG = ROOT / "kind-config.yaml"
VALUES = ROOT / "examples" / "kind" / "values.yaml"
TOOLS = ("kind", "docker", "helm", "kubectl")


def run_script(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    # No docker, kind or helm here: PATH keeps only what bash itself needs, so a dry run that
    # called one of them would fail instead of passing by luck on a machine that has them.
    clean = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp"), **env}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=clean, timeout=20)


# --- shellcheck -------------------------------------------------------------------------------


def test_shellcheck_finds_nothing_in_any_script() -> None:
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is not installed: run scripts/setup.sh (it installs the Debian package)"
    scripts = sorted((ROOT / "scripts").glob("*.sh"))
    assert SCRIPT in scripts and len(scripts) >= 4
    proc = subprocess.run([shellcheck, "--severity=style", "--format=gcc", *map(str, scripts)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"shellcheck findings:\n{proc.stdout}{proc.stderr}"


def test_shellcheck_really_reports(tmp_path: Path) -> None:
    """Guard: the check above fails on a finding (an unquoted variable)."""
    bad = tmp_path / "bad.sh"
    bad.write_text('#!/usr/bin/env bash\nset -euo pipefail\nx="a b"\nls $x\n')
    proc = subprocess.run([shutil.which("shellcheck") or "shellcheck", "--format=gcc", str(bad)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "SC2086" in proc.stdout


def test_every_script_is_strict() -> None:
    for script in sorted((ROOT / "scripts").glob("*.sh")):
        head = script.read_text().splitlines()[:25]
        assert "set -euo pipefail" in head, f"{script.name} does not start with set -euo pipefail"


# --- the node image against the chart's kubeVersion ---------------------------------------------


def parse_version(text: str) -> tuple[int, int, int]:
    m = re.fullmatch(r"v?(\d+)\.(\d+)\.(\d+)(?:-[0-9A-Za-z.-]+)?", text)
    assert m, f"not a version: {text!r}"
    return int(m[1]), int(m[2]), int(m[3])


def satisfies(version: tuple[int, int, int], constraint: str) -> bool:
    """A Helm (Masterminds semver) constraint of comparisons joined by spaces or commas
    (AND) and || (OR); a -0 prerelease suffix only widens to prereleases."""
    ops = {">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b,
           "<": lambda a, b: a < b, "=": lambda a, b: a == b, "!=": lambda a, b: a != b}
    for alternative in constraint.split("||"):
        terms = re.findall(r"(>=|<=|!=|>|<|=)?\s*(v?\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?)", alternative)
        assert terms, f"cannot read constraint {constraint!r}"
        if all(ops[op or "="](version, parse_version(v)) for op, v in terms):
            return True
    return False


def test_constraint_reader() -> None:
    assert satisfies((1, 28, 0), ">=1.28.0-0") and not satisfies((1, 27, 16), ">=1.28.0-0")
    assert satisfies((1, 30, 1), ">=1.28.0-0 <1.31.0") and not satisfies((1, 31, 0), ">=1.28.0-0 <1.31.0")
    assert satisfies((1, 20, 0), ">=1.28.0 || 1.20.0")


def test_kind_config_pins_a_node_image_the_chart_supports() -> None:
    config = yaml.safe_load(KIND_CONFIG.read_text())
    assert (config["kind"], config["apiVersion"]) == ("Cluster", "kind.x-k8s.io/v1alpha4")
    images = {node.get("image") for node in config["nodes"]}
    assert len(images) == 1 and None not in images, "every node must pin the same kindest/node image"
    (image,) = images
    m = re.fullmatch(r"kindest/node:(v\d+\.\d+\.\d+)@sha256:([0-9a-f]{64})", image)
    assert m, f"not a digest-pinned kindest/node image: {image}"
    kube_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"]
    assert satisfies(parse_version(m[1]), kube_version), f"{image} is outside the chart's kubeVersion {kube_version}"
    # The cluster name the script uses (it passes --name too) and the README's promises.
    assert config["name"] == "conveyor" and 'CLUSTER="${CLUSTER:-conveyor}"' in SCRIPT.read_text()
    readme = section()
    assert m[1] in readme and re.search(r"kind v0\.\d+\.\d+", readme)


# --- the manifests as the script applies them ------------------------------------------------


def manifests(namespace: str) -> list[dict[str, Any]]:
    proc = run_script("--print-manifests", NAMESPACE=namespace)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@pytest.mark.parametrize("namespace", ["conveyor-demo", "team-a"])
def test_manifests_are_valid_and_follow_the_namespace(namespace: str) -> None:
    docs = manifests(namespace)
    assert [d["kind"] for d in docs] == ["Deployment", "Service", "JobQueue"]
    for doc in docs:
        assert "namespace" not in doc["metadata"], "the script applies with -n; a namespace in the file would win"
        if doc["kind"] != "JobQueue":
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    deployment, service, jq = docs
    assert service["spec"]["selector"] == deployment["spec"]["template"]["metadata"]["labels"]
    assert admission(jq) == [], "the JobQueue fails the CRD's schema or CEL rules"
    assert jq["spec"]["redis"]["url"] == f"redis://{service['metadata']['name']}.{namespace}.svc.cluster.local:6379/0"
    assert "${" not in yaml.safe_dump(docs)


def test_a_bad_namespace_is_refused_with_one_line() -> None:
    proc = run_script("--dry-run", NAMESPACE="Not_A_Namespace")
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip().count("\n") == 0 and "not a valid namespace name" in proc.stderr


# --- --dry-run against the README's steps -----------------------------------------------------


def section() -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("### Try it all on kind")
    following = re.search(r"^#{1,3} ", readme[start + 5:], re.M)
    return readme[start:start + 5 + following.start()] if following else readme[start:]


def command_name(words: list[str]) -> str:
    """tool + subcommand: ``kubectl --context c -n ns rollout status x`` -> "kubectl rollout status"."""
    tool, rest = words[0], words[1:]
    sub: list[str] = []
    with_value = {"--context", "-n", "--namespace", "--kube-context", "--name", "-c", "-t", "-o", "-f"}
    i = 0
    while i < len(rest):
        if rest[i] in with_value:
            i += 2
            continue
        if rest[i].startswith("-"):
            i += 1
            continue
        sub.append(rest[i])
        i += 1
    two = (tool in ("kind",)) or (tool, sub[:1]) in (("kubectl", ["rollout"]), ("docker", ["image"]))
    return " ".join([tool, *sub[:2 if two else 1]])


def first_seen(names: list[str]) -> list[str]:
    return list(dict.fromkeys(names))


def test_dry_run_prints_the_documented_steps_in_order() -> None:
    proc = run_script("--dry-run", RUN_ID="run-test", NAMESPACE="team-a")
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.strip() and not line.startswith("#")]
    printed = [shlex.split(line) for line in lines]
    assert all(words[0] in TOOLS for words in printed), [w[0] for w in printed]
    # Every kubectl call names the context and the namespace (the operator's or the demo's).
    for words in printed:
        if words[0] == "kubectl":
            assert words[1:3] == ["--context", "kind-conveyor"], words
            assert words[3:5] in (["-n", "team-a"], ["-n", "conveyor-system"]) or words[3] == "create", words
    ran = first_seen([command_name(w) for w in printed])

    steps = re.search(r"^1\. .*?(?=\n\n)", section(), re.S | re.M)
    assert steps, "the README section has no numbered steps"
    documented = [shlex.split(code) for code in re.findall(r"`([^`]+)`", steps[0]) if code.split()[0] in TOOLS]
    documented_names = first_seen([command_name(w) for w in documented])
    assert ran == documented_names
    assert ran[:6] == ["kind create cluster", "docker build", "kind load docker-image", "docker image save",
                       "kind load image-archive", "helm upgrade"]
    # The values file is the one the emulator test installs; the jobs carry this run's ID.
    helm_line = next(w for w in printed if w[0] == "helm")
    assert helm_line[helm_line.index("-f") + 1] == "examples/kind/values.yaml" and "--timeout" in helm_line
    execs = [w for w in printed if command_name(w) == "kubectl exec"]
    assert len(execs) == 3 and all(w[-2:] == ["run-test", "20"] for w in execs[:2])
    assert "job_id=f\"{run}-{i}\"" in execs[0][execs[0].index("--") + 3]
    # Every wait has a timeout.
    for words in printed:
        if command_name(words) in ("kubectl wait", "kubectl rollout status"):
            assert any(w.startswith("--timeout=") for w in words), words


# --- the chart with the script's values, in the API emulator ----------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[ChartCluster]:
    c = ChartCluster().start()
    yield c
    c.stop()


@pytest.mark.slow
def test_chart_with_the_kind_values_installs_and_reconciles_the_demo_jobqueue(
        cluster: ChartCluster, tmp_path: Path) -> None:
    kubeconfig = cluster.write_kubeconfig(tmp_path / "config")
    values = yaml.safe_load(VALUES.read_text())
    # Only what a shared test machine needs on top: free ports for the operator's endpoints.
    local = {**values, "operator": {**values.get("operator", {}), "livenessPort": free_port(),
                                    "resyncSeconds": 0.5, "redisTimeoutSeconds": 0.5,
                                    "metrics": {"port": free_port()}}}
    (installed,) = helm(kubeconfig, {"action": "install", "chart": str(CHART), "name": "conveyor",
                                     "namespace": "conveyor-system", "values": local})
    assert (installed["revision"], installed["status"]) == (1, "deployed")
    deployment = cluster.get("/apis/apps/v1/namespaces/conveyor-system/deployments/conveyor-operator")
    assert deployment
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    image = f"{values['image']['repository']}:{values['image']['tag']}"
    assert (container["image"], container["imagePullPolicy"]) == (image, "IfNotPresent") == ("conveyor:kind", "IfNotPresent")
    assert 'IMAGE=conveyor:kind' in SCRIPT.read_text()

    # The script's manifests, applied the way it applies them (kubectl -n NAMESPACE apply -f -).
    ns = "kind-flow"
    kubectl = Kubectl(kubeconfig)
    text = run_script("--print-manifests", NAMESPACE=ns).stdout
    kubectl("--validate=false", "-n", ns, "apply", "-f", "-", input=text)
    jq = cluster.get(f"/apis/conveyor.dev/v1alpha1/namespaces/{ns}/jobqueues/demo")
    assert jq and jq["spec"]["redis"]["url"] == f"redis://redis.{ns}.svc.cluster.local:6379/0"
    assert cluster.get(f"/api/v1/namespaces/{ns}/services/redis")

    op = InstalledOperator(deployment, kubeconfig, tmp_path / "operator.log", cluster)
    try:
        workers = wait_for(lambda: cluster.get(f"/apis/apps/v1/namespaces/{ns}/deployments/demo-worker"),
                           timeout=8, what="the demo JobQueue's worker Deployment")
        worker = workers["spec"]["template"]["spec"]["containers"][0]
        assert worker["name"] == "worker" and worker["image"] == image  # kubectl exec -c worker; the loaded image
        assert workers["spec"]["replicas"] == 2
        assert workers["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/instance"] == "demo"
        env = {e["name"]: e.get("value") for e in worker.get("env", [])}
        assert env["CONVEYOR_REDIS_URL"] == jq["spec"]["redis"]["url"]

        # The script's own kubectl lines (from --dry-run), run as printed with real kubectl:
        # `get` finds the JobQueue and its workers; `wait` knows jq/demo and gives up at its
        # timeout (Ready cannot come here: no pod ever becomes ready) with a non-zero status.
        printed = [shlex.split(line) for line in run_script("--dry-run", NAMESPACE=ns).stdout.splitlines()
                   if line.strip() and not line.startswith("#")]
        kube_env = {**os.environ, "KUBECONFIG": str(kind_kubeconfig(cluster, tmp_path)), "HOME": str(tmp_path)}
        kubectl_bin = str(Path(sys.executable).parent / "kubectl")

        def as_printed(words: list[str]) -> subprocess.CompletedProcess[str]:
            return subprocess.run([kubectl_bin, *words[1:]], capture_output=True, text=True, env=kube_env, timeout=30)

        gets = [as_printed(w) for w in printed if command_name(w) == "kubectl get"]
        assert all(p.returncode == 0 for p in gets), [p.stderr for p in gets]
        assert "demo" in gets[0].stdout.split() and "demo-worker" in gets[1].stdout.split()
        (wait,) = [w for w in printed if command_name(w) == "kubectl wait"]
        assert "jq/demo" in wait and "--timeout=3m" in wait
        started = time.monotonic()
        waited = as_printed([w if w != "--timeout=3m" else "--timeout=2s" for w in wait])
        assert waited.returncode != 0 and "timed out" in waited.stderr, waited.stderr
        assert time.monotonic() - started < 8
    except BaseException:
        print(op.log())
        raise
    finally:
        op.stop()


# --- the script's own functions, with real kubectl against the API emulator ------------------


def kind_kubeconfig(cluster: ChartCluster, tmp_path: Path) -> Path:
    """A kubeconfig whose context has the name the script uses (kind-conveyor)."""
    path = cluster.write_kubeconfig(tmp_path / "kind-config")
    config = yaml.safe_load(path.read_text())
    config["contexts"][0]["name"] = config["current-context"] = "kind-conveyor"
    path.write_text(yaml.safe_dump(config))
    return path


def source_and_run(kubeconfig: Path, namespace: str, call: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Source scripts/kind-demo.sh (functions only) and run one of them."""
    full = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(kubeconfig.parent),
            "KUBECONFIG": str(kubeconfig), "NAMESPACE": namespace, **env}
    return subprocess.run(["bash", "-c", f'source "$1"; {call}', "kind-demo", str(SCRIPT)],
                          capture_output=True, text=True, env=full, timeout=30)


def make_pod(cluster: ChartCluster, ns: str, name: str, phase: str, instance: str = "demo",
             deleting: bool = False) -> None:
    """A pod as the API server holds it: status written through /status; a terminating one
    deleted while a finalizer keeps it (it gets its deletionTimestamp, as during a rollout)."""
    meta: dict[str, Any] = {"name": name, "namespace": ns, "labels": {"app.kubernetes.io/instance": instance}}
    if deleting:
        meta["finalizers"] = ["test.conveyor.dev/keep"]
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"containers": [{"name": "worker", "image": "conveyor:kind"}]}}
    path = f"/api/v1/namespaces/{ns}/pods"
    code, answer = cluster.request("POST", path, body, content_type="application/json")
    assert code in (200, 201), answer
    code, answer = cluster.request("PATCH", f"{path}/{name}/status", {"status": {"phase": phase}})
    assert code == 200, answer
    if deleting:
        assert cluster.request("DELETE", f"{path}/{name}")[0] == 200
        pod = cluster.get(f"{path}/{name}")
        assert pod and pod["metadata"].get("deletionTimestamp") and pod["status"]["phase"] == phase


def test_worker_pod_is_running_and_not_being_deleted(cluster: ChartCluster, tmp_path: Path) -> None:
    kubeconfig, ns = kind_kubeconfig(cluster, tmp_path), "pick-pods"
    make_pod(cluster, ns, "a-terminating", "Running", deleting=True)
    make_pod(cluster, ns, "b-pending", "Pending")
    make_pod(cluster, ns, "c-other-jobqueue", "Running", instance="other")
    # Only a terminating pod and a pending one: no pod within the deadline, and a non-zero status.
    proc = source_and_run(kubeconfig, ns, "worker_pod", POD_WAIT_SECONDS="1")
    assert (proc.returncode, proc.stdout) == (1, ""), proc.stderr
    make_pod(cluster, ns, "d-live", "Running")
    proc = source_and_run(kubeconfig, ns, "worker_pod", POD_WAIT_SECONDS="1")
    assert (proc.returncode, proc.stdout) == (0, "d-live\n"), proc.stderr


@pytest.mark.slow
def test_a_failing_exec_is_retried_then_ends_with_diagnostics(cluster: ChartCluster, tmp_path: Path) -> None:
    """The emulator cannot exec: every try fails, each on a freshly picked live pod, and the
    script ends with exit 1 and what to look at, not a bare kubectl error."""
    kubeconfig, ns = kind_kubeconfig(cluster, tmp_path), "exec-fails"
    make_pod(cluster, ns, "live", "Running")
    proc = source_and_run(kubeconfig, ns, "exec_worker true; echo NOT REACHED", EXEC_TRIES="2", POD_WAIT_SECONDS="1")
    assert proc.returncode == 1 and "NOT REACHED" not in proc.stdout
    err = proc.stderr
    assert "exec into live failed (try 1/2)" in err and "exec into live failed (try 2/2)" in err
    assert "FAILED: kubectl exec into a worker pod failed 2 times" in err
    for hint in ("-n conveyor-system logs deploy/conveyor-operator", f"-n {ns} describe jq demo",
                 f"-n {ns} get events", f"--- kubectl -n {ns} get pods -o wide"):
        assert hint in err, hint
    assert "live" in err.split(f"--- kubectl -n {ns} get pods -o wide", 1)[1]  # the pods, as the cluster lists them

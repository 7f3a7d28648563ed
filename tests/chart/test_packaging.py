"""What cannot run here (no Docker engine): the Dockerfile, .dockerignore and the kind flow,
checked statically, and every piece of the kind flow that can run without a cluster run
for real (its manifests validated, its Python one-liners against a real Redis)."""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import subprocess
import sys

import kubernetes_validate
import pytest
import yaml

from chart_helpers import KUBE_VERSION, ROOT, crd_validator, one, render
from conveyor.embedded import EmbeddedRedis

DOCKERFILE = (ROOT / "Dockerfile").read_text()
KIND_SCRIPT = ROOT / "scripts" / "kind-demo.sh"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in DOCKERFILE.splitlines() if not line.lstrip().startswith("#")))
    return [(m.group(1).upper(), m.group(2).strip()) for m in re.finditer(r"^(\w+)\s+(.*)$", text, re.M)]


def script_var(name: str) -> str:
    """A variable's value as the script sets it: NAME=value, NAME="${NAME:-default}" (the
    default) or NAME='multi-line text'."""
    text = KIND_SCRIPT.read_text()
    m = re.search(rf"^{name}='(.*?)'$", text, re.M | re.S)
    if m:
        return m.group(1)
    m = re.search(rf"^{name}=(.*)$", text, re.M)
    assert m, f"{name} not set in {KIND_SCRIPT.name}"
    value = shlex.split(m.group(1), comments=True)[0]
    default = re.fullmatch(rf"\$\{{{name}:-(.*)\}}", value)
    return default.group(1) if default else value


# --- Dockerfile --------------------------------------------------------------------------------


def test_dockerfile_is_multi_stage_slim_and_non_root() -> None:
    ins = instructions()
    args = dict(a.split("=", 1) for i, a in ins if i == "ARG" and "=" in a)
    froms = [a for i, a in ins if i == "FROM"]
    assert len(froms) == 2 and froms[0].endswith(" AS build")
    base = args["PYTHON_IMAGE"]
    assert base.startswith("python:3.11-slim")
    assert all(f.split()[0] == "${PYTHON_IMAGE}" for f in froms)
    final = ins[max(n for n, (i, _) in enumerate(ins) if i == "FROM"):]
    assert ("USER", "10001:10001") in final
    assert any(i == "COPY" and a.startswith("--from=build /opt/conveyor") for i, a in final)
    assert not any(i == "RUN" and "pip install" in a for i, a in final), "the final stage must not build anything"
    env = " ".join(a for i, a in final if i == "ENV")
    assert "PATH=/opt/conveyor/bin:$PATH" in env and "PYTHONPATH=/app" in env and "HOME=/tmp" in env
    assert ("CMD", '["conveyor", "worker"]') in final
    assert not any(i == "ENTRYPOINT" for i, _ in ins), "the operator and the chart set `command`"


def test_dockerfile_installs_the_operator_and_dashboard_extras_and_checks_the_commands() -> None:
    run = " ".join(a for i, a in instructions() if i == "RUN")
    assert 'pip install ".[operator,dashboard]"' in run
    assert "conveyor --help" in run and "test -x /opt/conveyor/bin/conveyor-operator" in run
    # `conveyor dashboard --help` works without the extra (it imports it only to serve), so the
    # build imports the app and Starlette's form parser (python-multipart) too.
    assert "/opt/conveyor/bin/conveyor dashboard --help" in run
    assert "import conveyor.dashboard.app, uvicorn, starlette.formparsers" in run
    # The commands the chart and the operator run are the package's console scripts.
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert {"conveyor", "conveyor-operator"} <= set(scripts)
    dep = one(render()[0], "Deployment")
    assert dep["spec"]["template"]["spec"]["containers"][0]["command"] == ["conveyor-operator"]
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {"operator", "dashboard"} <= set(extras)
    web = render({"webDashboard": {"enabled": True, "readOnly": True, "redis": {"url": "redis://r:6379/0"}}})[0]
    web_dep = next(d for d in web if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-web-dashboard"))
    assert web_dep["spec"]["template"]["spec"]["containers"][0]["command"] == ["conveyor", "dashboard"]


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last matching pattern wins (``!`` re-includes)."""
    ignored = False
    for pat in patterns:
        neg = pat.startswith("!")
        pat = pat.lstrip("!").rstrip("/")
        parts = path.split("/")
        if any(fnmatch.fnmatch("/".join(parts[:n]), pat) or fnmatch.fnmatch("/".join(parts[:n]), pat.replace("**/", ""))
               for n in range(1, len(parts) + 1)) or fnmatch.fnmatch(path, pat):
            ignored = not neg
    return ignored


def test_dockerignore_sends_only_what_the_build_copies() -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    copied = [p for a in (a for i, a in instructions() if i == "COPY" and not a.startswith("--from"))
              for p in a.split()[:-1]]
    assert copied == ["pyproject.toml", "README.md", "runtime/", "operator/"]
    for src in copied:
        assert (ROOT / src).exists() and not _ignored(src.rstrip("/"), patterns), src
    for path in ("runtime/conveyor/cli.py", "runtime/conveyor/scripts/claim.lua", "operator/conveyor_operator/handlers.py"):
        assert not _ignored(path, patterns), path
    for path in (".venv/bin/python", ".git/HEAD", "tests/conftest.py", "charts/conveyor/Chart.yaml",
                 "runtime/conveyor/__pycache__/cli.cpython-311.pyc", "conveyor.egg-info/PKG-INFO"):
        assert _ignored(path, patterns), path


# --- the kind flow -------------------------------------------------------------------------------


def test_kind_script_parses_and_uses_the_files_it_names() -> None:
    subprocess.run(["bash", "-n", str(KIND_SCRIPT)], check=True)
    assert os.access(KIND_SCRIPT, os.X_OK)
    text = KIND_SCRIPT.read_text()
    kind_config = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    assert script_var("CLUSTER") == kind_config["name"]
    for rel in ("kind-config.yaml", "charts/conveyor", "examples/kind/redis.yaml", "examples/kind/jobqueue.yaml",
                "examples/kind/values.yaml"):
        assert rel in text and (ROOT / rel).exists(), rel
    assert "docker build -t \"$IMAGE\" ." in text and 'kind load docker-image "$IMAGE"' in text
    assert 'kind load image-archive' in text  # the fallback for Docker's containerd image store
    # The image the script builds is the one its values file installs.
    values = yaml.safe_load((ROOT / "examples/kind/values.yaml").read_text())
    assert script_var("IMAGE") == f"{values['image']['repository']}:{values['image']['tag']}"
    render(values, name=script_var("RELEASE"), namespace=script_var("OPERATOR_NAMESPACE"))
    # The Deployment names it waits on are the ones the chart and the operator create.
    dep = one(render(name=script_var("RELEASE"), namespace=script_var("OPERATOR_NAMESPACE"))[0], "Deployment")
    assert '"deployment/${RELEASE}-operator"' in text
    assert dep["metadata"]["name"] == f"{script_var('RELEASE')}-operator"
    from conveyor_operator import builders

    jq = script_var("JQ")
    assert '"deployment/${JQ}-worker"' in text and builders.names(jq)["deployment"] == f"{jq}-worker"
    assert "-c worker" in text  # the container name the operator gives workers
    assert '"app.kubernetes.io/instance=${JQ}"' in text
    assert builders.selector_labels(jq)["app.kubernetes.io/instance"] == jq
    jq_doc = yaml.safe_load((ROOT / "examples/kind/jobqueue.yaml").read_text())
    assert jq_doc["metadata"]["name"] == jq


def test_kind_manifests_are_valid() -> None:
    redis_docs = [d for d in yaml.safe_load_all((ROOT / "examples/kind/redis.yaml").read_text()) if d]
    assert {d["kind"] for d in redis_docs} == {"Deployment", "Service"}
    for doc in redis_docs:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    # A template: the script fills in ${NAMESPACE} (tests/chart/test_kind_flow.py checks its output).
    jq = yaml.safe_load((ROOT / "examples/kind/jobqueue.yaml").read_text().replace("${NAMESPACE}", "team-a"))
    validator = crd_validator(yaml.safe_load((ROOT / "crds/jobqueues.conveyor.dev.yaml").read_text()))
    assert [e.message for e in validator.iter_errors(jq)] == []
    service = next(d for d in redis_docs if d["kind"] == "Service")
    # The JobQueue's URL points at that Service, in the namespace the script applies both to.
    assert jq["spec"]["redis"]["url"] == f"redis://{service['metadata']['name']}.team-a.svc.cluster.local:6379/0"
    assert service["spec"]["ports"][0]["port"] == 6379
    assert jq["spec"]["queues"] == ["demo"]


@pytest.mark.slow
def test_kind_python_one_liners_enqueue_and_count_against_a_real_redis() -> None:
    """The exact snippets the script runs with `kubectl exec` in a worker pod, run here with
    CONVEYOR_REDIS_URL set the way the operator sets it in worker pods: a second run's jobs
    are counted apart from the first run's, still in the finished registry."""
    def py(snippet: str, *args: str) -> list[str]:
        return subprocess.run([sys.executable, "-c", script_var(snippet), *args], env=env, capture_output=True,
                              text=True, check=True, timeout=30).stdout.split()

    with EmbeddedRedis() as server:
        env = {**os.environ, "CONVEYOR_REDIS_URL": server.url}
        assert py("ENQUEUE_PY", "run1", "5") == "enqueued 5 jobs on queue demo, IDs run1-0 ... run1-4".split()
        from conveyor import Queue

        q = Queue("demo", redis_url=server.url)
        assert q.count == 5 and sorted(q.job_ids) == [f"run1-{i}" for i in range(5)]
        assert py("STATUS_PY", "run1", "5") == ["0", "0", "5"]
        # The jobs run: a burst worker drains them, then the counting one-liner sees them finished.
        worker = [sys.executable, "-m", "conveyor", "worker", "-q", "demo", "--burst", "--concurrency", "5",
                  "--metrics-port", "0"]
        subprocess.run(worker, env=env, check=True, timeout=60, capture_output=True)
        assert py("STATUS_PY", "run1", "5") == ["5", "0", "0"]
        # A re-run: run1's jobs stay finished (result_ttl), run2's are not done yet.
        py("ENQUEUE_PY", "run2", "3")
        assert len(q.finished.job_ids) == 5
        assert py("STATUS_PY", "run2", "3") == ["0", "0", "3"]
        subprocess.run(worker, env=env, check=True, timeout=60, capture_output=True)
        assert py("STATUS_PY", "run2", "3") == ["3", "0", "0"]
        q.connection.close()


@pytest.mark.parametrize("heading", ["## On Kubernetes"])
def test_readme_ends_with_the_kubernetes_section(heading: str) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index(heading):]
    assert "\n## " not in section[len(heading):], "the Kubernetes section must be the last one"
    for needle in ("helm install conveyor charts/conveyor", "kubectl apply -f examples/minimal.yaml",
                   "FROM registry.example.com/conveyor", "./scripts/kind-demo.sh", "kind-config.yaml",
                   "python scripts/sync-chart-files.py"):
        assert needle in section, needle

"""Mutual TLS against a real redis-server that demands client certificates (certificates made
with openssl by the fixture), and the one-line errors of every way TLS can go wrong."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import jobs_faults
from conveyor import ConveyorError, JobStatus, Queue
from conveyor.connection import RedisTarget, TlsFiles
from deployments import TlsRedis
from support import WORKER_ENV, WorkerProcess, wait_until


@pytest.fixture(scope="module")
def tls() -> Iterator[TlsRedis]:
    with TlsRedis() as server:
        yield server


def env_for(tls: TlsRedis, **over: str) -> dict[str, str]:
    return {**WORKER_ENV, "CONVEYOR_REDIS_URL": tls.url, "CONVEYOR_REDIS_CA_FILE": tls.ca_file,
            "CONVEYOR_REDIS_CERT_FILE": tls.cert_file, "CONVEYOR_REDIS_KEY_FILE": tls.key_file, **over}


def test_client_worker_and_cli_speak_mutual_tls(tls: TlsRedis, tmp_path: Path) -> None:
    path = str(tmp_path / "runs")
    client = RedisTarget.parse(tls.url, TlsFiles(tls.ca_file, tls.cert_file, tls.key_file)).client()
    client.flushall()
    q = Queue("tls", connection=client)
    jobs = [q.enqueue("jobs_faults:record", path, f"t{i}") for i in range(3)]
    # The worker takes the files from its flags.
    w = WorkerProcess(tls.url, ("-q", "tls", "--redis-ca-file", tls.ca_file, "--redis-cert-file", tls.cert_file,
                                "--redis-key-file", tls.key_file), tmp_path / "w.log")
    try:
        wait_until(lambda: all(j.refresh().status is JobStatus.FINISHED for j in jobs), 15, "the jobs")
    finally:
        w.stop()
    assert jobs_faults.executions(path) == {"t0": 1, "t1": 1, "t2": 1}
    # The CLI takes them from the environment (as the operator's pods set them), or the URL query.
    res = subprocess.run([sys.executable, "-m", "conveyor", "info"], env=env_for(tls), capture_output=True,
                         text=True, timeout=30)
    assert res.returncode == 0 and "tls" in res.stdout, res.stderr
    query = f"{tls.url}?ssl_ca_certs={tls.ca_file}&ssl_certfile={tls.cert_file}&ssl_keyfile={tls.key_file}"
    assert RedisTarget.parse(query, TlsFiles()).client().ping()


@pytest.mark.parametrize(("change", "words"), [
    ({"CONVEYOR_REDIS_CA_FILE": "OTHER"}, "TLS certificate verify failed at rediss://127.0.0.1:{port}/0 (CA file: OTHER)"),
    ({"CONVEYOR_REDIS_CA_FILE": "/no/such/ca.pem"}, "the TLS CA file /no/such/ca.pem does not exist"),
    ({"CONVEYOR_REDIS_CERT_FILE": "", "CONVEYOR_REDIS_KEY_FILE": ""}, "cannot reach Redis at rediss://"),
])
def test_what_went_wrong_is_one_line(tls: TlsRedis, change: dict[str, str], words: str) -> None:
    change = {k: (tls.other_ca_file if v == "OTHER" else v) for k, v in change.items()}
    words = words.replace("OTHER", tls.other_ca_file).replace("{port}", str(tls.port))
    # A worker retries a Redis it cannot reach (its line is checked below); a file that does
    # not exist can never work, so it refuses to start.
    commands = [["info"]] + ([["worker", "--burst", "--metrics-port", "0"]] if "does not exist" in words else [])
    for args in commands:
        res = subprocess.run([sys.executable, "-m", "conveyor", *args], env=env_for(tls, **change),
                             capture_output=True, text=True, timeout=30)
        assert res.returncode != 0 and words in res.stderr, res.stderr
        assert "Traceback" not in res.stderr


def test_the_worker_names_a_ca_that_does_not_verify(tls: TlsRedis, tmp_path: Path) -> None:
    w = WorkerProcess(tls.url, ("-q", "tls", "--redis-ca-file", tls.other_ca_file, "--redis-cert-file",
                                tls.cert_file, "--redis-key-file", tls.key_file), tmp_path / "w.log")
    try:
        w.wait_log(f"TLS certificate verify failed at {tls.url} (CA file: {tls.other_ca_file})", 15)
    finally:
        w.stop()


def test_queue_names_a_missing_ca(tls: TlsRedis) -> None:
    with pytest.raises(ConveyorError, match="does not exist"):
        Queue("q", redis_url=tls.url + "?ssl_ca_certs=/nope.pem")

"""One way to say where Redis is: every URL form parses the same for client, worker, CLI and
operator; a URL that cannot work is named in one line; passwords never show."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conveyor.connection import CLUSTER, SENTINEL, SERVER, RedisTarget, TlsFiles, describe, mask_url
from conveyor.errors import ConfigError
from support import WORKER_ENV


def test_every_form_parses() -> None:
    t = RedisTarget.parse("redis+sentinel://user:s3cret@h1:26379,h2:26380/mymaster/2?sentinel_password=sp",
                          TlsFiles())
    assert (t.kind, t.hosts, t.master, t.db) == (SENTINEL, (("h1", 26379), ("h2", 26380)), "mymaster", 2)
    assert t.options == {"username": "user", "password": "s3cret"}
    assert t.sentinel_options == {"password": "sp"}
    assert RedisTarget.parse("sentinel://h1:26379/m", TlsFiles()).db == 0
    c = RedisTarget.parse("redis+cluster://:pw@10.0.0.1:7000,10.0.0.2:7001", TlsFiles())
    assert (c.kind, c.hosts, c.options, c.is_cluster) == (CLUSTER, (("10.0.0.1", 7000), ("10.0.0.2", 7001)),
                                                          {"password": "pw"}, True)
    for url in ("redis://localhost:6379/0", "rediss://h:6380/1", "unix:///tmp/redis.sock?db=3"):
        assert RedisTarget.parse(url, TlsFiles()).kind == SERVER


def test_tls_files_reach_every_kind(tmp_path: Path) -> None:
    ca, cert, key = (tmp_path / n for n in ("ca.pem", "c.pem", "c.key"))
    for f in (ca, cert, key):
        f.write_text("x")
    files = TlsFiles(str(ca), str(cert), str(key))
    s = RedisTarget.parse("rediss+sentinel://h:26379/m", files)
    assert s.options["ssl"] and s.options["ssl_ca_certs"] == str(ca) and s.sentinel_options["ssl_keyfile"] == str(key)
    c = RedisTarget.parse("rediss+cluster://h:7000", files)
    assert c.options["ssl_certfile"] == str(cert)
    assert RedisTarget.parse("rediss://h:6380/0", files).options["ssl_ca_certs"] == str(ca)
    assert RedisTarget.parse("redis://h:6379/0", files).options == {}  # no TLS, no TLS options
    assert RedisTarget.parse("rediss://h/0", files).ca_file == str(ca)


@pytest.mark.parametrize(("url", "words"), [
    ("http://h:1/0", "unsupported Redis URL"),
    ("redis+sentinel://h:26379", "names its master"),
    ("redis+sentinel://h:26379/m/x", "database 'x'"),
    ("redis+cluster://h:7000/3", "only database 0"),
    ("redis+cluster://h", "is not host:port"),
    ("redis+cluster://h:7000?bogus=1", "unknown option 'bogus'"),
])
def test_a_url_that_cannot_work_is_named(url: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        RedisTarget.parse(url, TlsFiles())


def test_missing_tls_files_are_named() -> None:
    with pytest.raises(ConfigError, match="CA file /no/such/ca.pem does not exist"):
        RedisTarget.parse("rediss://h/0", TlsFiles(ca_file="/no/such/ca.pem"))
    with pytest.raises(ConfigError, match="needs both"):
        RedisTarget.parse("rediss://h/0", TlsFiles(cert_file=__file__))


@pytest.mark.parametrize("url", [
    "redis://user:hunter2@h:6379/0",
    "redis://:hunter2@h:6379/0",
    "redis://h:6379/0?password=hunter2",
    "redis+sentinel://u:hunter2@h1:1,h2:2/m/0?sentinel_password=hunter2",
    "rediss+cluster://h:7000?password=hunter2&ssl_ca_certs=/ca.pem",
])
def test_passwords_are_masked(url: str) -> None:
    masked = mask_url(url)
    assert "hunter2" not in masked and "***" in masked
    assert masked.split("://")[0] == url.split("://")[0]


def test_cli_and_worker_name_a_bad_url_in_one_line() -> None:
    url = "redis+sentinel://u:hunter2@127.0.0.1:1?sentinel_password=hunter2"
    for args in (["info"], ["worker", "--burst"]):
        res = subprocess.run([sys.executable, "-m", "conveyor", *args, "--redis-url", url], env=WORKER_ENV,
                             capture_output=True, text=True, timeout=30)
        assert res.returncode == 2, res.stderr
        assert "names its master" in res.stderr and "hunter2" not in res.stderr + res.stdout
        assert "Traceback" not in res.stderr


def test_describe_names_the_cause() -> None:
    import redis

    assert "credentials" in describe(redis.AuthenticationError("invalid username-password pair"))
    line = describe(redis.exceptions.NoPermissionError(
        "this user has no permissions to run the 'time' command or its subcommand script: 578c"))
    assert "TIME command" in line and "README" in line and "ACL" in line
    assert "full" in describe(redis.exceptions.OutOfMemoryError("OOM command not allowed"))
    assert "redis+cluster://" in describe(redis.exceptions.MovedError("3999 127.0.0.1:7001"))
    assert "read-only replica" in describe(redis.exceptions.ReadOnlyError("You can't write against a read only replica."))
    assert "hunter2" not in describe(redis.ConnectionError("refused"), "redis://:hunter2@h/0")

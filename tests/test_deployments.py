"""Sanity checks of the deployments in deployments.py, with plain redis-py as the client.

One deployment of each kind per module (per xdist worker); tests that break a deployment
(kill a node, fail over) get their own, except the cluster's manual failover, which leaves
the cluster whole and healthy.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis
from redis.cluster import ClusterNode as RedisClusterNode
from redis.cluster import RedisCluster
from redis.sentinel import Sentinel

from deployments import AclRedis, Addr, RedisClusterDeployment, SentinelGroup, TlsRedis, wait_for

# The fixtures' own checks, with plain redis-py. The default run already uses every deployment
# (tests/test_{sentinel,cluster,tls,acl}.py); these run with ./scripts/test.sh --all.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sentinel_group() -> Iterator[SentinelGroup]:
    with SentinelGroup() as group:
        yield group


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterDeployment]:
    with RedisClusterDeployment() as c:
        yield c


@pytest.fixture(scope="module")
def tls_redis() -> Iterator[TlsRedis]:
    with TlsRedis() as server:
        yield server


@pytest.fixture(scope="module")
def acl_redis() -> Iterator[AclRedis]:
    with AclRedis() as server:
        yield server


def sentinel_client(group: SentinelGroup) -> Sentinel:
    sentinel_kwargs = {"password": group.sentinel_password} if group.sentinel_password else None
    return Sentinel(group.sentinel_addrs, socket_timeout=2, sentinel_kwargs=sentinel_kwargs, password=group.password)


def cluster_client(c: RedisClusterDeployment) -> RedisCluster:
    seeds = [RedisClusterNode(a.host, a.port) for a in c.masters()]
    return RedisCluster(startup_nodes=seeds, socket_timeout=2)


# -- Sentinel -----------------------------------------------------------------------------

def test_sentinel_url_and_master(sentinel_group: SentinelGroup) -> None:
    ports = [a.port for a in sentinel_group.sentinel_addrs]
    assert len(set(ports)) == 3
    assert sentinel_group.url() == "redis+sentinel://" + ",".join(f"127.0.0.1:{p}" for p in ports) + "/mymaster/0"
    assert sentinel_group.url(db=3, prefix_scheme="rediss+sentinel").startswith("rediss+sentinel://")
    assert sentinel_group.url(db=3).endswith("/mymaster/3")
    sentinel = sentinel_client(sentinel_group)
    assert Addr(*sentinel.discover_master("mymaster")) == sentinel_group.master_addr()


def test_sentinel_master_for_set_get_and_replication(sentinel_group: SentinelGroup) -> None:
    sentinel = sentinel_client(sentinel_group)
    master = sentinel.master_for("mymaster")
    master.set("greeting", "hello")
    assert master.get("greeting") == b"hello"
    replica = sentinel.slave_for("mymaster")
    wait_for(lambda: replica.get("greeting") == b"hello", 5, "the write to reach the replica")
    with pytest.raises(redis.ReadOnlyError):
        replica.set("greeting", "nope")


@pytest.mark.slow
@pytest.mark.timeout(300)  # two failovers and two restarts (~35 s), each allowed 60 s
def test_sentinel_failover_and_restart() -> None:
    # 3 s, not 1: on a loaded machine a freshly promoted master can be silent for a second, and
    # a sentinel then failed over again, to the old master restarted empty (seen once).
    with SentinelGroup(down_after_ms=3000) as group:
        sentinel = sentinel_client(group)
        sentinel.master_for("mymaster").set("before", "1")
        # The write reaches the replica before the master dies, or the failover loses it.
        wait_for(lambda: sentinel.slave_for("mymaster").get("before") == b"1", 5, "replication")
        old = group.kill_master()
        assert old not in [a for a, p in group.procs.items() if p.alive]
        new = group.wait_failover(old)
        assert new != old and group.master_addr() == new
        master = sentinel.master_for("mymaster")
        assert master.get("before") == b"1"
        master.set("after", "2")
        group.restart(old)  # back as a replica of the new master, once Sentinel demotes it
        old_node = redis.Redis(host=old.host, port=old.port)
        assert old_node.execute_command("ROLE")[0] == b"slave"
        wait_for(lambda: old_node.get("after") == b"2", 5, "the restarted node to replicate")
        old_node.close()
        # And back again, the quick way, so the group can fail over to the old node.
        older = group.kill_master()
        assert group.wait_failover(older) == old
        group.restart(older, as_replica=True)
        assert sentinel.master_for("mymaster").get("after") == b"2"


@pytest.mark.slow
def test_sentinel_with_passwords() -> None:
    with SentinelGroup("secured", password="data-pw", sentinel_password="sentinel-pw") as group:
        assert group.url().startswith("redis+sentinel://:data-pw@127.0.0.1:")
        assert group.url().endswith("/secured/0")
        master = sentinel_client(group).master_for("secured")
        master.set("k", "v")
        assert master.get("k") == b"v"
        a_sentinel = group.sentinel_addrs[0]
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host=a_sentinel.host, port=a_sentinel.port, retry=None).ping()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host=group.master_addr().host, port=group.master_addr().port, retry=None).ping()


# -- Cluster ------------------------------------------------------------------------------

def test_cluster_topology(cluster: RedisClusterDeployment) -> None:
    masters, replicas = cluster.masters(), cluster.replicas()
    assert len(masters) == 3 and len(replicas) == 3
    assert set(masters) | set(replicas) == set(cluster.nodes)
    assert all(p.poll() is None for p in cluster.nodes.values())
    for m in masters:
        assert len(cluster.replicas(of=m)) == 1
    assert cluster.url().startswith("redis+cluster://127.0.0.1:")
    assert len(cluster.url().removeprefix("redis+cluster://").split(",")) == 3


def test_cluster_set_get_across_slots(cluster: RedisClusterDeployment) -> None:
    client = cluster_client(cluster)
    keys = [f"key-{i}" for i in range(60)]
    owners = {cluster.master_of_slot(client.keyslot(k)) for k in keys}
    assert len(owners) == 3, "60 keys should land on every master"
    for k in keys:
        client.set(k, k.upper())
    assert [client.get(k) for k in keys] == [k.upper().encode() for k in keys]
    # The deployment's idea of a slot's master is the one that holds the key.
    k = keys[0]
    owner = cluster.master_of_slot(client.keyslot(k))
    with redis.Redis(host=owner.host, port=owner.port) as node:
        assert node.execute_command("GET", k) == k.upper().encode()
    client.close()


def test_cluster_manual_failover(cluster: RedisClusterDeployment) -> None:
    client = cluster_client(cluster)
    slot = client.keyslot("failover-key")
    old_master = cluster.master_of_slot(slot)
    client.set("failover-key", "1")
    (replica,) = cluster.replicas(of=old_master)
    t0 = time.monotonic()
    cluster.manual_failover(replica)
    assert time.monotonic() - t0 < 15
    assert cluster.master_of_slot(slot) == replica
    assert old_master in cluster.replicas(of=replica)
    assert client.get("failover-key") == b"1"  # redis-py follows the MOVED redirect
    client.set("failover-key", "2")
    client.close()


@pytest.mark.slow
def test_cluster_kill_master_and_restart() -> None:
    with RedisClusterDeployment() as c:
        client = cluster_client(c)
        slot = client.keyslot("k")
        victim = c.master_of_slot(slot)
        (heir,) = c.replicas(of=victim)
        c.kill(victim)
        assert c.nodes[victim].poll() is not None
        c.wait_ok(30)
        assert c.master_of_slot(slot) == heir
        c.restart(victim)
        assert victim in c.replicas(of=heir)
        client.close()


# -- TLS ----------------------------------------------------------------------------------

def test_tls_with_client_certificate(tls_redis: TlsRedis) -> None:
    assert tls_redis.url.startswith("rediss://127.0.0.1:")
    client = redis.Redis.from_url(tls_redis.url, ssl_ca_certs=tls_redis.ca_file,
                                  ssl_certfile=tls_redis.cert_file, ssl_keyfile=tls_redis.key_file)
    assert client.ping()
    client.set("k", "v")
    assert client.get("k") == b"v"
    client.close()


def test_tls_refuses_client_without_certificate(tls_redis: TlsRedis) -> None:
    client = redis.Redis.from_url(tls_redis.url, ssl_ca_certs=tls_redis.ca_file, retry=None)
    with pytest.raises(redis.ConnectionError):
        client.ping()


def test_tls_refuses_certificate_from_another_ca(tls_redis: TlsRedis) -> None:
    client = redis.Redis.from_url(tls_redis.url, ssl_ca_certs=tls_redis.ca_file, retry=None,
                                  ssl_certfile=tls_redis.other_cert_file, ssl_keyfile=tls_redis.other_key_file)
    with pytest.raises(redis.ConnectionError):
        client.ping()


def test_tls_client_rejects_server_from_unknown_ca(tls_redis: TlsRedis) -> None:
    client = redis.Redis.from_url(tls_redis.url, ssl_ca_certs=tls_redis.other_ca_file, retry=None,
                                  ssl_certfile=tls_redis.cert_file, ssl_keyfile=tls_redis.key_file)
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        client.ping()


def test_tls_plaintext_is_not_served(tls_redis: TlsRedis) -> None:
    client = redis.Redis(host="127.0.0.1", port=tls_redis.port, socket_timeout=2, retry=None)
    with pytest.raises(redis.ConnectionError):
        client.ping()


# -- ACL ----------------------------------------------------------------------------------

def test_acl_default_user_needs_password(acl_redis: AclRedis) -> None:
    assert redis.Redis.from_url(acl_redis.url).ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=acl_redis.port, retry=None).ping()


def test_acl_user_limited_by_rule(acl_redis: AclRedis) -> None:
    redis.Redis.from_url(acl_redis.url).set("app:k", "v")
    url = acl_redis.add_user("reader", "reader-pw", "~app:* +get +ping")
    assert url == f"redis://reader:reader-pw@127.0.0.1:{acl_redis.port}/0"
    reader = redis.Redis.from_url(url, retry=None)
    assert reader.get("app:k") == b"v"
    with pytest.raises(redis.exceptions.NoPermissionError):
        reader.set("app:k", "w")  # command outside the rule
    with pytest.raises(redis.exceptions.NoPermissionError):
        reader.get("other:k")  # key outside the rule
    # Setting the user again replaces its rules rather than adding to them.
    writer_url = acl_redis.add_user("reader", "reader-pw", "~app:* +set")
    writer = redis.Redis.from_url(writer_url, retry=None)
    assert writer.set("app:k", "w")
    with pytest.raises(redis.exceptions.NoPermissionError):
        writer.get("app:k")
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(url.replace("reader-pw", "wrong"), retry=None).ping()

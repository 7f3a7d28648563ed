"""Real local Redis deployments for tests: Sentinel, Cluster, mutual TLS and ACL users.

Every deployment runs Debian's redis-server (7.0) on free ports, with its configs and logs
in a temporary directory and nothing persisted. Each is a context manager; leaving it
SIGKILLs every process it started, also when the test failed. Each process runs in its
own process group (so a fork child, e.g. the master's replication snapshot, dies with it)
and gets SIGKILL from the kernel if the test process itself dies (PR_SET_PDEATHSIG), so
no stray server outlives a run.

Imported by name (``from deployments import SentinelGroup``), like support.py.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, Self, TypeVar
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

T = TypeVar("T")
HOST = "127.0.0.1"
CLUSTER_SLOTS = 16384


class DeploymentError(RuntimeError):
    """A deployment did not start or did not reach the state a method waits for."""


class Addr(NamedTuple):
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


# -- shared helpers: ports, waiting, one server process ----------------------------------

def free_ports(n: int) -> list[int]:
    """n distinct free ports: all sockets stay bound until every port is picked, so the
    kernel cannot hand the same port out twice."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_for(check: Callable[[], T], timeout: float, what: str, procs: Iterable[RedisProcess] = (),
             interval: float = 0.05) -> T:
    """Poll check() until it returns something truthy and return that.

    Redis and socket errors count as "not yet" (nodes restart, elect, resync while we look).
    A process in `procs` that exits without being killed fails the wait at once, and the
    timeout error carries the tail of every log in `procs`: that is where the reason is.
    """
    procs = list(procs)
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = check()
            if value:
                return value
        except (redis.RedisError, OSError) as exc:
            last_error = exc
        for p in procs:
            if p.crashed:
                raise DeploymentError(f"{p.name} exited ({p.proc.returncode}) while waiting for {what}\n{logs(procs)}")
        if time.monotonic() > deadline:
            why = f" (last error: {last_error!r})" if last_error else ""
            raise DeploymentError(f"timed out after {timeout:.0f}s waiting for {what}{why}\n{logs(procs)}")
        time.sleep(interval)


def logs(procs: Iterable[RedisProcess], chars: int = 1500) -> str:
    return "\n".join(f"--- {p.name} ({p.addr}) log tail ---\n{p.log_tail(chars)}" for p in procs)


def _die_with_parent() -> None:
    # Runs in the child before exec: the kernel SIGKILLs it when the test process dies,
    # even by SIGKILL or a crash, where no teardown code would run. (Strictly, when the
    # thread that started it ends: start deployments from the test's own thread.)
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def redis_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise DeploymentError(f"{name} is not on PATH; run scripts/setup.sh (apt-get install redis-server redis-tools)")
    return path


class RedisProcess:
    """One redis-server (data node or sentinel): its directory, config file, log and process.

    The config is a file rather than flags because Sentinel insists on one and rewrites it,
    and CONFIG REWRITE (which Sentinel sends to the nodes it reconfigures) needs one too: a
    restarted node then starts from what Sentinel last told it.
    """

    def __init__(self, name: str, port: int, workdir: Path, config: list[str], *, sentinel: bool = False,
                 client_kw: dict[str, Any] | None = None) -> None:
        self.name = name
        self.addr = Addr(HOST, port)
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf = self.dir / ("sentinel.conf" if sentinel else "redis.conf")
        base = [f"bind {HOST}", f"dir {self.dir}", "loglevel notice"]
        if not sentinel:
            # No persistence; a replica's full sync starts at once instead of after the 5 s
            # a master waits by default for more replicas to share one diskless transfer.
            base += ['save ""', "appendonly no", "repl-diskless-sync-delay 0"]
        self.conf.write_text("\n".join([*base, *config]) + "\n")
        self.sentinel = sentinel
        self.client_kw = client_kw or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.killed = False  # by us: a dead process that was not killed has crashed
        self._client: redis.Redis | None = None

    @property
    def log_path(self) -> Path:
        return self.dir / "server.log"

    def start(self, timeout: float = 10.0, extra: tuple[str, ...] = ()) -> None:
        """Start (or start again) and wait until it answers; `extra` overrides the config file."""
        args = [redis_binary("redis-server"), str(self.conf), *extra] + (["--sentinel"] if self.sentinel else [])
        with open(self.log_path, "ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(args, cwd=self.dir, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         preexec_fn=_die_with_parent)
        self.killed = False
        self._client = None
        # The answer must come from our process, not another server on a reused port.
        wait_for(lambda: int(self.client().info("server")["process_id"]) == self.proc.pid,
                 timeout, f"{self.name} to answer on {self.addr}", [self], interval=0.02)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def crashed(self) -> bool:
        return self.proc is not None and not self.killed and self.proc.poll() is not None

    def client(self) -> redis.Redis:
        """An admin connection (decoded replies, short timeouts, no retries: a dead node must
        fail fast so that polling moves on)."""
        if self._client is None:
            self._client = redis.Redis(host=HOST, port=self.addr.port, decode_responses=True,
                                       socket_timeout=2, socket_connect_timeout=1,
                                       retry=Retry(NoBackoff(), 0), **self.client_kw)
        return self._client

    def role(self) -> str:
        return str(self.client().execute_command("ROLE")[0])

    def kill(self) -> None:
        """SIGKILL the process group: a node must vanish as on a crash or power loss."""
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.proc is None:
            return
        self.killed = True
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()

    def log_tail(self, chars: int = 1500) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"


class Deployment:
    """Start/stop plumbing shared by the deployments: a temporary directory, retries, teardown.

    A start that fails (a port taken between picking and binding it, a cluster that does not
    form on a starved machine) is retried from scratch on new ports, with a warning so that
    the flakiness stays visible.
    """

    attempts = 3
    prefix = "conveyor-deploy-"

    def __init__(self) -> None:
        self.procs: dict[Addr, RedisProcess] = {}
        self.startup_seconds: float | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def dir(self) -> Path:
        assert self._tmp is not None, "not started"
        return Path(self._tmp.name)

    def start(self, timeout: float = 60.0) -> Self:
        t0 = time.monotonic()
        for attempt in range(1, self.attempts + 1):
            self._tmp = tempfile.TemporaryDirectory(prefix=self.prefix)
            try:
                self._start(timeout)
                self.startup_seconds = time.monotonic() - t0
                return self
            except DeploymentError as exc:
                self.stop()
                if attempt == self.attempts:
                    raise
                warnings.warn(f"{type(self).__name__} start attempt {attempt} failed, retrying: {exc}", stacklevel=1)
            except BaseException:
                self.stop()
                raise
        raise AssertionError("unreachable")

    def _start(self, timeout: float) -> None:
        raise NotImplementedError

    def _add(self, proc: RedisProcess) -> RedisProcess:
        self.procs[proc.addr] = proc
        return proc

    def live(self) -> list[RedisProcess]:
        return [p for p in self.procs.values() if p.alive]

    def kill(self, addr: Addr | tuple[str, int]) -> None:
        """SIGKILL one node (the test's simulated crash)."""
        self.procs[Addr(*addr)].kill()

    def stop(self) -> None:
        for p in self.procs.values():
            p.kill()
        self.procs = {}
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]) -> None:
        self.stop()


# -- Sentinel -----------------------------------------------------------------------------

class SentinelGroup(Deployment):
    """A master, its replicas and sentinels watching them, with fast failover settings.

    `password` protects the data nodes (requirepass + masterauth, and `sentinel auth-pass`
    so the sentinels can talk to them); `sentinel_password` protects the sentinels
    themselves (requirepass in sentinel.conf, which sentinels also use with each other).
    """

    prefix = "conveyor-sentinel-"

    def __init__(self, master_name: str = "mymaster", *, replicas: int = 1, sentinels: int = 3, quorum: int = 2,
                 down_after_ms: int = 1000, failover_timeout_ms: int = 5000,
                 password: str | None = None, sentinel_password: str | None = None) -> None:
        super().__init__()
        self.master_name = master_name
        self.n_replicas, self.n_sentinels, self.quorum = replicas, sentinels, quorum
        self.down_after_ms, self.failover_timeout_ms = down_after_ms, failover_timeout_ms
        self.password, self.sentinel_password = password, sentinel_password
        self.data: list[RedisProcess] = []
        self.sentinels: list[RedisProcess] = []

    def _start(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        self.data, self.sentinels = [], []
        ports = free_ports(1 + self.n_replicas + self.n_sentinels)
        auth = [f"requirepass {self.password}", f"masterauth {self.password}"] if self.password else []
        data_kw = {"password": self.password} if self.password else {}
        master_port = ports[0]
        for i, port in enumerate(ports[: 1 + self.n_replicas]):
            follow = [f"replicaof {HOST} {master_port}"] if i else []
            node = RedisProcess(f"redis-{i}", port, self.dir / f"redis-{port}", [f"port {port}", *auth, *follow],
                                client_kw=data_kw)
            self.data.append(self._add(node))
            node.start(_left(deadline))
        # Replicas first finish their initial sync: a sentinel then learns every replica from
        # its first INFO of the master, and a failover has somewhere to go.
        for node in self.data[1:]:
            wait_for(lambda node=node: self._link_up(node), _left(deadline), f"{node.name} to sync", self.data)
        for port in ports[1 + self.n_replicas:]:
            conf = [f"port {port}",
                    f"sentinel monitor {self.master_name} {HOST} {master_port} {self.quorum}",
                    f"sentinel down-after-milliseconds {self.master_name} {self.down_after_ms}",
                    f"sentinel failover-timeout {self.master_name} {self.failover_timeout_ms}",
                    f"sentinel parallel-syncs {self.master_name} 1"]
            if self.password:
                conf.append(f"sentinel auth-pass {self.master_name} {self.password}")
            if self.sentinel_password:
                conf.append(f"requirepass {self.sentinel_password}")
            kw = {"password": self.sentinel_password} if self.sentinel_password else {}
            s = RedisProcess(f"sentinel-{len(self.sentinels)}", port, self.dir / f"sentinel-{port}", conf,
                             sentinel=True, client_kw=kw)
            self.sentinels.append(self._add(s))
            s.start(_left(deadline))
        # Sentinels find each other through hello messages (every 2 s) on the master; until
        # they have, no quorum can be reached and a failover would never start.
        wait_for(self._settled, _left(deadline), "sentinels to agree on the master, replicas and each other",
                 self.procs.values())

    # -- what the sentinels say

    @property
    def sentinel_addrs(self) -> list[Addr]:
        return [s.addr for s in self.sentinels]

    def url(self, db: int = 0, prefix_scheme: str = "redis+sentinel") -> str:
        """redis+sentinel://[:password@]host:port,host:port,.../master_name/db (the
        password is the data nodes'; sentinel_password is not in the URL)."""
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        hosts = ",".join(str(a) for a in self.sentinel_addrs)
        return f"{prefix_scheme}://{auth}{hosts}/{self.master_name}/{db}"

    def _ask(self, sentinel: RedisProcess) -> Addr:
        host, port = sentinel.client().execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
        return Addr(host, int(port))

    def master_addr(self) -> Addr:
        """The master according to the first sentinel that answers."""
        errors = []
        for s in self.sentinels:
            if s.alive:
                try:
                    return self._ask(s)
                except redis.RedisError as exc:
                    errors.append(f"{s.name}: {exc!r}")
        raise DeploymentError(f"no sentinel answered: {errors}")

    def _views(self) -> set[Addr]:
        """The masters the live sentinels name (one element when they agree)."""
        return {self._ask(s) for s in self.sentinels if s.alive}

    def _replica_states(self, sentinel: RedisProcess) -> dict[Addr, dict[str, str]]:
        rows = sentinel.client().execute_command("SENTINEL", "REPLICAS", self.master_name)
        states = [_as_dict(row) for row in rows]
        return {Addr(st["ip"], int(st["port"])): st for st in states}

    def _settled(self) -> bool:
        """Every live sentinel names the same live master, sees every other live data node as
        a healthy replica, and knows every other live sentinel."""
        views = self._views()
        if len(views) != 1:
            return False
        master = views.pop()
        if master not in self.procs or not self.procs[master].alive or self.procs[master].role() != "master":
            return False
        want_replicas = {n.addr for n in self.data if n.alive and n.addr != master}
        live_sentinels = [s for s in self.sentinels if s.alive]
        for s in live_sentinels:
            states = self._replica_states(s)
            healthy = {a for a, st in states.items()
                       if st["flags"] == "slave" and st.get("master-link-status") == "ok"}
            if not want_replicas <= healthy:
                return False
            peers = s.client().execute_command("SENTINEL", "SENTINELS", self.master_name)
            flags = [_as_dict(row)["flags"] for row in peers]
            if sum(f == "sentinel" for f in flags) < len(live_sentinels) - 1:
                return False
        return True

    @staticmethod
    def _link_up(node: RedisProcess) -> bool:
        info = node.client().info("replication")
        return info.get("role") == "slave" and info.get("master_link_status") == "up"

    # -- failures

    def kill_master(self) -> Addr:
        """SIGKILL the current master; returns its address."""
        addr = self.master_addr()
        self.kill(addr)
        return addr

    def wait_failover(self, old_addr: Addr | tuple[str, int], timeout: float = 60.0) -> Addr:
        """Wait until every live sentinel names a master other than old_addr and that node
        says it is a master; returns the new master's address.

        One sentinel's word is not enough: a client may ask any of them. Failover takes
        ~2-4 s; the timeout also covers a split vote (sentinels retry after 2 x
        failover-timeout) and TILT (a sentinel starved for 2 s stops acting for 30 s).
        """
        old = Addr(*old_addr)

        def promoted() -> Addr | None:
            views = self._views()
            if len(views) != 1:
                return None
            new = views.pop()
            if new == old or new not in self.procs or self.procs[new].role() != "master":
                return None
            return new

        return wait_for(promoted, timeout, f"sentinels to fail over from {old}", self.procs.values())

    def restart(self, addr: Addr | tuple[str, int], timeout: float = 60.0, *, as_replica: bool = False) -> None:
        """Start a killed node again on its port, from its config file, and wait until the
        group is settled again: a data node is back as a synced replica of the current master
        and every sentinel sees it so; a restarted sentinel agrees with the others.

        A killed old master comes back as an empty master, as it would in production, and
        Sentinel demotes it; that takes 10-20 s (Sentinel refreshes a replica's INFO every
        10 s, then waits 8 s before reconfiguring it). as_replica=True starts it with
        --replicaof the current master instead, as a careful operator would: ~1 s.
        """
        node = self.procs[Addr(*addr)]
        if node.alive:
            raise DeploymentError(f"{node.name} at {node.addr} is running; kill it first")
        deadline = time.monotonic() + timeout
        extra: tuple[str, ...] = ()
        if as_replica and not node.sentinel:
            master = self.master_addr()
            extra = ("--replicaof", master.host, str(master.port))
        node.start(_left(deadline), extra)
        if node.sentinel:
            wait_for(self._settled, _left(deadline), f"{node.name} to rejoin", self.procs.values())
            return
        # Back means settled with this node in it: as a replica of the master, or as the master
        # itself when a loaded machine made the sentinels fail over once more, to it.
        wait_for(lambda: (self._link_up(node) or node.role() == "master") and self._settled(), _left(deadline),
                 f"{node.name} to come back as a replica of {self.master_addr()}", self.procs.values())


# -- Cluster ------------------------------------------------------------------------------

class ClusterNode(NamedTuple):
    """One line of CLUSTER NODES."""
    id: str
    addr: Addr
    flags: frozenset[str]
    master_id: str | None
    slots: tuple[tuple[int, int], ...]  # inclusive ranges this node serves (masters only)


def cluster_nodes(client: redis.Redis) -> list[ClusterNode]:
    nodes = []
    for line in str(client.execute_command("CLUSTER", "NODES")).splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        host_port = fields[1].split("@")[0].split(",")[0]
        host, _, port = host_port.rpartition(":")
        slots = []
        for spec in fields[8:]:
            if spec.startswith("["):  # a slot being migrated or imported: not an owner
                continue
            start, _, end = spec.partition("-")
            slots.append((int(start), int(end or start)))
        nodes.append(ClusterNode(fields[0], Addr(host or HOST, int(port or 0)), frozenset(fields[2].split(",")),
                                 None if fields[3] == "-" else fields[3], tuple(sorted(slots))))
    return nodes


class RedisClusterDeployment(Deployment):
    """Masters with replicas each, made into a cluster by `redis-cli --cluster create`.

    Each node gets its own cluster bus port (cluster-port) instead of port+10000, which may
    be taken or past 65535.
    """

    prefix = "conveyor-cluster-"

    def __init__(self, masters: int = 3, replicas_per_master: int = 1, node_timeout_ms: int = 2000) -> None:
        super().__init__()
        self.n_masters, self.replicas_per_master, self.node_timeout_ms = masters, replicas_per_master, node_timeout_ms
        self._order: list[Addr] = []  # start order; the first nodes are the URL's seeds

    @property
    def nodes(self) -> dict[Addr, subprocess.Popen[bytes]]:
        return {a: p.proc for a, p in self.procs.items() if p.proc is not None}

    def _start(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        n = self.n_masters * (1 + self.replicas_per_master)
        ports = free_ports(2 * n)
        for port, bus in zip(ports[:n], ports[n:]):
            conf = [f"port {port}", "cluster-enabled yes", "cluster-config-file nodes.conf",
                    f"cluster-node-timeout {self.node_timeout_ms}", f"cluster-port {bus}"]
            self._add(RedisProcess(f"cluster-{len(self.procs)}", port, self.dir / f"node-{port}", conf))
        self._order = list(self.procs)
        for p in self.procs.values():
            p.start(_left(deadline))
        # redis-cli refuses nodes that are not empty, fresh cluster members; make sure each
        # one answers CLUSTER INFO before asking it to join.
        wait_for(lambda: all(p.client().execute_command("CLUSTER", "INFO") for p in self.procs.values()),
                 _left(deadline), "every node to answer CLUSTER INFO", self.procs.values())
        cmd = [redis_binary("redis-cli"), "--cluster", "create", *(str(a) for a in self._order),
               "--cluster-replicas", str(self.replicas_per_master), "--cluster-yes"]
        try:
            # redis-cli waits for the join without a deadline of its own.
            out = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                 timeout=max(1.0, _left(deadline) - 5))
        except subprocess.TimeoutExpired as exc:
            raise DeploymentError(f"redis-cli --cluster create did not finish: {exc.stdout!r}") from None
        if out.returncode != 0:
            raise DeploymentError(f"redis-cli --cluster create failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
        # redis-cli returns once the replicas were told whom to follow; the other nodes learn
        # it by gossip, so wait for the whole topology, not only cluster_state:ok.
        n_replicas = self.n_masters * self.replicas_per_master
        wait_for(lambda: self._ok() and len(self.masters()) == self.n_masters and len(self.replicas()) == n_replicas,
                 _left(deadline), f"{self.n_masters} masters and {n_replicas} synced replicas", self.procs.values())

    def url(self) -> str:
        """redis+cluster://host:port,... with up to three live nodes as seeds."""
        seeds = [a for a in self._order if self.procs[a].alive][:3]
        return "redis+cluster://" + ",".join(str(a) for a in seeds)

    def _view(self) -> list[ClusterNode]:
        for a in self._order:
            if self.procs[a].alive:
                try:
                    return cluster_nodes(self.procs[a].client())
                except redis.RedisError:
                    continue
        raise DeploymentError("no cluster node answered")

    def masters(self) -> list[Addr]:
        """Live masters, as the first answering node sees them."""
        return [n.addr for n in self._view() if "master" in n.flags and "fail" not in n.flags
                and n.addr in self.procs and self.procs[n.addr].alive]

    def replicas(self, of: Addr | tuple[str, int] | None = None) -> list[Addr]:
        """Live replicas (of one master when `of` is given)."""
        view = self._view()
        master_id = None if of is None else next(n.id for n in view if n.addr == Addr(*of))
        return [n.addr for n in view if "slave" in n.flags and "fail" not in n.flags
                and (master_id is None or n.master_id == master_id)
                and n.addr in self.procs and self.procs[n.addr].alive]

    def master_of_slot(self, slot: int) -> Addr:
        for n in self._view():
            if any(start <= slot <= end for start, end in n.slots):
                return n.addr
        raise DeploymentError(f"no node serves slot {slot}")

    def _ok(self) -> bool:
        live = self.live()
        live_addrs = {p.addr for p in live}
        slot_maps, topologies = set(), set()
        for p in live:
            if "cluster_state:ok" not in str(p.client().execute_command("CLUSTER", "INFO")):
                return False
            view = cluster_nodes(p.client())
            by_id = {n.id: n.addr for n in view}
            slot_maps.add(frozenset((start, end, n.addr) for n in view for start, end in n.slots))
            # Who is master, and whom each replica follows, as this node sees it (its own
            # line included): after a failover or CLUSTER REPLICATE the news travels by gossip.
            topologies.add(frozenset((n.addr, "master" in n.flags, by_id.get(n.master_id or ""))
                                     for n in view if n.addr in live_addrs))
        if len(slot_maps) != 1 or len(topologies) != 1:
            return False
        slot_map = slot_maps.pop()
        if sum(end - start + 1 for start, end, _ in slot_map) != CLUSTER_SLOTS:
            return False
        # cluster_state stays ok for node-timeout after a master dies: a dead owner means
        # the failover has not happened yet.
        if any(owner not in live_addrs for _, _, owner in slot_map):
            return False
        # Replicas in sync, so that a manual failover (which waits for the replica to catch
        # up) or a kill of their master finds them ready.
        for p in live:
            info = p.client().info("replication")
            if info["role"] == "slave" and info.get("master_link_status") != "up":
                return False
        return True

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every live node says cluster_state:ok, they all agree which live master
        serves each of the 16384 slots and who replicates whom, and every live replica is
        in sync."""
        wait_for(self._ok, timeout, "the cluster to be ok with one slot map on every node", self.procs.values())

    def manual_failover(self, replica_addr: Addr | tuple[str, int], timeout: float = 30.0) -> None:
        """CLUSTER FAILOVER on a replica; wait until it is a master and the cluster is ok.

        The command only starts a handshake; if the master does not answer within 5 s the
        replica gives up silently, so the command is sent again until it takes.
        """
        node = self.procs[Addr(*replica_addr)]
        deadline = time.monotonic() + timeout
        while True:
            node.client().execute_command("CLUSTER", "FAILOVER")
            try:
                wait_for(lambda: node.role() == "master", min(8.0, _left(deadline)),
                         f"{node.name} to become a master", self.procs.values())
                break
            except DeploymentError:
                if _left(deadline) <= 0:
                    raise
        self.wait_ok(_left(deadline))

    def restart(self, addr: Addr | tuple[str, int], timeout: float = 30.0) -> None:
        """Start a killed node again on its port; it rejoins with its nodes.conf (as a
        replica if it had been a master that failed over). Waits until the cluster is ok."""
        node = self.procs[Addr(*addr)]
        deadline = time.monotonic() + timeout
        node.start(_left(deadline))
        self.wait_ok(_left(deadline))


# -- mutual TLS ---------------------------------------------------------------------------

_OPENSSL_CNF = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


class TlsRedis(Deployment):
    """A redis-server that speaks only TLS and demands a client certificate from its CA.

    Certificates are made with the openssl CLI (EC P-256 keys: quick to generate) and carry
    the extensions strict verifiers (Python 3.13's VERIFY_X509_STRICT) require. Besides the
    CA, server and client files there is an unrelated CA (`other_ca_file`) and a client
    certificate it signed (`other_cert_file`/`other_key_file`), for tests where verification
    must fail on either side.
    """

    prefix = "conveyor-tls-"

    def __init__(self) -> None:
        super().__init__()
        self.port = 0

    def _start(self, timeout: float) -> None:
        self._make_certs()
        (self.port,) = free_ports(1)
        conf = ["port 0", f"tls-port {self.port}", f"tls-cert-file {self.dir / 'server.crt'}",
                f"tls-key-file {self.dir / 'server.key'}", f"tls-ca-cert-file {self.ca_file}",
                "tls-auth-clients yes"]
        node = self._add(RedisProcess("tls-redis", self.port, self.dir / "redis", conf, client_kw=self.ssl_kwargs()))
        node.start(timeout)

    def _openssl(self, *args: str) -> None:
        out = subprocess.run([shutil.which("openssl") or "openssl", *args], cwd=self.dir, capture_output=True,
                             text=True, stdin=subprocess.DEVNULL)
        if out.returncode != 0:
            raise RuntimeError(f"openssl {' '.join(args)} failed:\n{out.stderr}")  # not retried: a bug

    def _make_certs(self) -> None:
        (self.dir / "openssl.cnf").write_text(_OPENSSL_CNF)
        key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        for ca in ("ca", "other-ca"):
            self._openssl("req", "-x509", "-config", "openssl.cnf", "-extensions", "ca", *key, "-days", "2",
                          "-subj", f"/CN=Conveyor test {ca}", "-keyout", f"{ca}.key", "-out", f"{ca}.crt")
        for name, ca, cn, ext in (("server", "ca", "127.0.0.1", "server"), ("client", "ca", "conveyor-client", "client"),
                                  ("other-client", "other-ca", "conveyor-client", "client")):
            self._openssl("req", "-new", "-config", "openssl.cnf", *key, "-subj", f"/CN={cn}",
                          "-keyout", f"{name}.key", "-out", f"{name}.csr")
            self._openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
                          "-CAcreateserial", "-days", "2", "-extfile", "openssl.cnf", "-extensions", ext,
                          "-out", f"{name}.crt")

    @property
    def url(self) -> str:
        return f"rediss://{HOST}:{self.port}/0"

    @property
    def ca_file(self) -> str:
        return str(self.dir / "ca.crt")

    @property
    def cert_file(self) -> str:
        """The client certificate (signed by ca_file)."""
        return str(self.dir / "client.crt")

    @property
    def key_file(self) -> str:
        return str(self.dir / "client.key")

    @property
    def other_ca_file(self) -> str:
        """A CA that signed neither the server's nor the client's certificate."""
        return str(self.dir / "other-ca.crt")

    @property
    def other_cert_file(self) -> str:
        """A client certificate signed by other_ca_file, which the server must refuse."""
        return str(self.dir / "other-client.crt")

    @property
    def other_key_file(self) -> str:
        return str(self.dir / "other-client.key")

    def ssl_kwargs(self) -> dict[str, Any]:
        """redis.Redis(...) arguments for a client that trusts the CA and presents its cert."""
        return {"ssl": True, "ssl_ca_certs": self.ca_file, "ssl_certfile": self.cert_file, "ssl_keyfile": self.key_file}

    def client(self) -> redis.Redis:
        """A client that trusts the CA and presents the client certificate."""
        return redis.Redis(host=HOST, port=self.port, socket_timeout=5, **self.ssl_kwargs())


# -- ACL ----------------------------------------------------------------------------------

class AclRedis(Deployment):
    """A redis-server whose default user needs a password, and users with ACL rules."""

    prefix = "conveyor-acl-"

    def __init__(self, password: str = "default-secret") -> None:
        super().__init__()
        self.password = password
        self.port = 0

    def _start(self, timeout: float) -> None:
        (self.port,) = free_ports(1)
        node = self._add(RedisProcess("acl-redis", self.port, self.dir / "redis",
                                      [f"port {self.port}", f"requirepass {self.password}"],
                                      client_kw={"password": self.password}))
        node.start(timeout)

    @property
    def url(self) -> str:
        """The default user's URL (with its password)."""
        return f"redis://:{quote(self.password, safe='')}@{HOST}:{self.port}/0"

    def add_user(self, name: str, password: str, rule: str) -> str:
        """ACL SETUSER name reset on >password <rule tokens>; returns the user's URL.

        `reset` first, so that calling it again for a name replaces the user's rules instead
        of adding to them (module-scoped servers outlive a test).
        """
        (node,) = self.procs.values()
        node.client().execute_command("ACL", "SETUSER", name, "reset", "on", f">{password}", *rule.split())
        return f"redis://{quote(name, safe='')}:{quote(password, safe='')}@{HOST}:{self.port}/0"


def _as_dict(reply: Any) -> dict[str, str]:
    """A field/value reply as a dict: RESP3 (redis-py 8's default) sends a map, RESP2 a flat list."""
    return dict(reply) if isinstance(reply, dict) else dict(zip(reply[::2], reply[1::2]))


def _left(deadline: float) -> float:
    """Seconds left until deadline (never negative)."""
    return max(0.0, deadline - time.monotonic())

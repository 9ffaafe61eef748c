"""Deploy files: the Procfile under honcho; docker-compose.yml and the Dockerfile by parsing (no
Docker engine here); requirements.txt against pyproject.toml; .python-version; .ci/run."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from connector.config import load_settings
from ops.embedded import free_port
from tests.support import secrets
from tests.support.processes import BIN, ROOT, base_env, wait_until


def procfile() -> dict[str, str]:
    entries = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, command = line.partition(":")
            entries[name.strip()] = command.strip()
    return entries


def test_procfile_names_the_processes_with_heroku_safe_worker() -> None:
    entries = procfile()
    assert set(entries) == {"web", "worker", "scheduler"}
    assert entries["web"].startswith("gunicorn ops.wsgi:app")
    worker = entries["worker"]
    assert worker.startswith("REMAP_SIGTERM=SIGQUIT ")  # Heroku: SIGTERM then SIGKILL after 30 s
    assert "celery -A workers.worker worker" in worker and "--pool gevent" in worker
    assert entries["scheduler"] == "connector scheduler"


CONNECTOR_SERVICES = ("web", "worker", "scheduler")
SANDBOX_SERVICES = ("fake-voucherify", "fake-segment")
INTERPOLATION_RE = re.compile(r"\$\{([A-Z_]+):-([^}]*)\}")


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ``${NAME:-default}`` (the only form used in docker-compose.yml)."""
    return INTERPOLATION_RE.sub(lambda m: env.get(m.group(1)) or m.group(2), value)


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def test_docker_compose_parses_and_matches_the_procfile() -> None:
    services = compose()["services"]
    assert set(services) == {"redis", "config", *CONNECTOR_SERVICES, *SANDBOX_SERVICES}
    redis_cmd = services["redis"]["command"]
    assert "--appendonly" in redis_cmd and redis_cmd[redis_cmd.index("--appendonly") + 1] == "yes"
    assert redis_cmd[redis_cmd.index("--maxmemory-policy") + 1] == "noeviction"
    entries = procfile()
    for name in CONNECTOR_SERVICES:
        compose_cmd = services[name]["command"]
        proc_cmd = [part for part in shlex.split(entries[name]) if "=" not in part or part.startswith("-")]
        assert compose_cmd == proc_cmd, name  # the same expressions, ${WORKER_CONCURRENCY:-100} included
        assert services[name]["environment"]["REDIS_URL"].startswith("redis://redis:6379")
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
        assert services[name]["depends_on"]["config"]["condition"] == "service_completed_successfully"
        assert "profiles" not in services[name]
    assert services["worker"]["environment"]["REMAP_SIGTERM"] == "SIGQUIT"


def test_compose_worker_concurrency_comes_from_the_environment() -> None:
    command = compose()["services"]["worker"]["command"]
    value = command[command.index("--concurrency") + 1]
    assert interpolate(value, {"WORKER_CONCURRENCY": "7"}) == "7"
    assert interpolate(value, {}) == "100"  # the Procfile's default
    assert "${WORKER_CONCURRENCY:-100}" in procfile()["worker"]


def test_compose_mounts_a_connections_file_directory() -> None:
    services = compose()["services"]
    for name in CONNECTOR_SERVICES:
        assert "./config:/srv/config:ro" in services[name]["volumes"], name
        assert services[name]["environment"]["CONNECTIONS_FILE"] == "${CONNECTIONS_FILE:-}"
        assert services[name]["env_file"] == [{"path": ".env", "required": False}]
    assert (ROOT / "config").is_dir()


def test_compose_sandbox_profile_is_wired_to_its_fakes() -> None:
    services = compose()["services"]
    env_file = dotenv(ROOT / "sandbox" / "compose.env")
    assert env_file["COMPOSE_PROFILES"] == "sandbox"
    for name in SANDBOX_SERVICES:
        assert services[name]["profiles"] == ["sandbox"]
    # The connections file the sandbox names is in the image (the Dockerfile copies sandbox/).
    in_image = env_file["CONNECTIONS_FILE"]
    assert in_image.startswith("/srv/sandbox/")
    local = ROOT / in_image.removeprefix("/srv/")
    assert "COPY sandbox ./sandbox" in dockerfile_lines() and local.exists()
    settings = load_settings({"CONNECTIONS_FILE": str(local)})
    connection = settings.connection("sandbox")
    assert connection is not None and connection.segment is not None
    # ...and points at the fake services, on the ports they listen on, with the fakes' keys.
    listening = {}
    for name in SANDBOX_SERVICES:
        command = services[name]["command"]
        assert command[command.index("--host") + 1] == "0.0.0.0"  # reachable from the other containers
        listening[name] = command[command.index("--port") + 1]
    assert connection.voucherify.base_url == f"http://fake-voucherify:{listening['fake-voucherify']}"
    assert connection.segment.base_url == f"http://fake-segment:{listening['fake-segment']}"
    vf_env = services["fake-voucherify"]["environment"]
    assert vf_env["FAKE_VOUCHERIFY_APP_ID"] == connection.voucherify.app_id.reveal()
    assert vf_env["FAKE_VOUCHERIFY_SECRET_KEY"] == connection.voucherify.secret_key.reveal()
    assert (
        services["fake-segment"]["environment"]["FAKE_SEGMENT_WRITE_KEYS"]
        == connection.segment.write_key.reveal()
    )
    # With the sandbox's env file, every connector service gets that connections file.
    for name in CONNECTOR_SERVICES:
        assert interpolate(services[name]["environment"]["CONNECTIONS_FILE"], env_file) == in_image


def dockerfile_lines() -> list[str]:
    """Dockerfile instructions, continuation lines joined, comments dropped."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_image_runs_as_an_unprivileged_user() -> None:
    lines = dockerfile_lines()
    users = [line.split(None, 1)[1] for line in lines if line.startswith("USER ")]
    assert users, "no USER instruction: the image would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    # The user can write where the processes write: the shared metrics directory.
    assert any("chown" in line and "/var/run/connector-metrics" in line and user in line for line in lines)
    # ...and nothing after USER needs root.
    after = lines[lines.index(next(line for line in lines if line.startswith("USER "))) :]
    assert not any(line.startswith("RUN ") for line in after)


def test_image_installs_the_pinned_requirements() -> None:
    lines = dockerfile_lines()
    assert "COPY requirements.txt ./" in lines
    assert any(line.startswith("RUN ") and "pip install -r" in line for line in lines)
    assert any(line.startswith("RUN ") and "pip install --no-deps ." in line for line in lines)


def dotenv(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


# --- requirements.txt (Heroku's Python buildpack installs it) -------------------------------


def requirement_lines() -> list[str]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def pins() -> dict[str, Version]:
    found = {}
    for line in requirement_lines():
        if line == ".":
            continue
        requirement = Requirement(line)
        [spec] = list(requirement.specifier)
        assert spec.operator == "==", f"not pinned: {line}"
        found[canonicalize_name(requirement.name)] = Version(spec.version)
    return found


def pyproject() -> dict[str, Any]:
    data: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return data


def closure(names: list[Requirement]) -> set[str]:
    """Every distribution the runtime dependencies pull in on this platform (installed metadata)."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        if name in seen:
            continue
        seen.add(name)
        for raw in metadata.requires(name) or []:
            child = Requirement(raw)
            extras = requirement.extras or {""}
            if child.marker is None or any(child.marker.evaluate({"extra": extra}) for extra in extras):
                todo.append(child)
    return seen


def test_requirements_pin_what_pyproject_requires() -> None:
    assert "." in requirement_lines()  # the project itself: its packages and the `connector` command
    pinned = pins()
    runtime = [Requirement(raw) for raw in pyproject()["project"]["dependencies"]]
    for requirement in runtime:
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{requirement.name} is in pyproject.toml but not in requirements.txt"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"requirements.txt pins {name}=={pinned[name]}, outside pyproject.toml's {requirement.specifier}"
        )
    # Complete: every distribution the runtime pulls in is pinned (none left to the resolver)...
    missing = closure(runtime) - set(pinned)
    assert not missing, f"not pinned in requirements.txt: {sorted(missing)} (make requirements)"
    # ...and nothing else: no dev or bench tool in a production install.
    extras = pyproject()["project"]["optional-dependencies"]
    tools = {canonicalize_name(Requirement(raw).name) for group in extras.values() for raw in group}
    assert not (tools - closure(runtime)) & set(pinned), "dev/bench extras pinned for production"


def test_python_version_file_satisfies_requires_python() -> None:
    version = (ROOT / ".python-version").read_text().strip()
    assert re.fullmatch(r"3\.\d+", version)  # major.minor: the buildpack picks the latest patch
    assert SpecifierSet(pyproject()["project"]["requires-python"]).contains(Version(version + ".0"))


def test_ci_runs_make_test() -> None:
    text = (ROOT / ".ci" / "run").read_text()
    assert "make test" in text
    assert os.access(ROOT / ".ci" / "run", os.X_OK)


@pytest.mark.integration
def test_procfile_starts_under_honcho(tmp_path: Path, redis_url: str) -> None:
    conn = tmp_path / "c.toml"
    conn.write_text(
        """
[[connection]]
id = "honcho"
write_keys = ["wk_honcho_key"]
[connection.voucherify]
app_id = "app-id-honcho"
secret_key = "secret-key-honcho"
region = "eu"
api_url = "http://127.0.0.1:9"
"""
    )
    port = free_port()
    env = base_env(redis_url, conn, PORT=str(port), WEB_CONCURRENCY="1", WORKER_CONCURRENCY="5")
    secrets.register_env(env)  # honcho's log is scanned at the end of the session
    log_path = tmp_path / "honcho.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(BIN / "honcho"), "start", "-f", str(ROOT / "Procfile"), "-d", str(ROOT)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until(
            lambda: requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok, timeout=40, what="web"
        )
        wait_until(lambda: "ready" in log_path.read_text(), timeout=40, what="worker ready")
        text = log_path.read_text()
        for name in ("web.1", "worker.1", "scheduler.1"):
            assert f"{name} started (pid=" in text, text[-3000:]
        assert proc.poll() is None, text[-3000:]
        assert "scheduler.1 stopped" not in text, text[-3000:]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


# --- the configuration gate and the health checks -----------------------------------------------


def service_env(name: str, redis_url: str, env_file: dict[str, str]) -> dict[str, str]:
    """What a compose service's process gets: its ``environment`` (interpolated from the env
    file, as compose does), with the test's Redis for ``redis:6379``."""
    service = compose()["services"][name]
    values = {k: interpolate(str(v), env_file) for k, v in service["environment"].items()}
    values["REDIS_URL"] = values["REDIS_URL"].replace("redis://redis:6379/0", redis_url)
    env = base_env(redis_url, None, **{**env_file, **values})
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return {k: v for k, v in env.items() if v != "" or k == "CONNECTIONS_FILE"}


def run_service_command(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    assert command[0] in ("connector", "python")
    return subprocess.run(
        [str(BIN / command[0]), *command[1:]], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def test_compose_without_configuration_stops_at_the_config_gate_not_in_a_restart_loop(
    redis_url: str,
) -> None:
    services = compose()["services"]
    gate = services["config"]
    assert gate["restart"] == "no"  # run once per `up`, never restarted
    assert gate["env_file"] == services["web"]["env_file"] and gate["volumes"] == ["./config:/srv/config:ro"]
    assert gate["depends_on"]["redis"]["condition"] == "service_healthy"
    assert gate["command"] == ["connector", "check", "--offline"]  # nothing called outside
    # No .env: the gate fails with the problem said, so `up` starts none of the services that
    # would exit 2 and restart forever.
    bare = run_service_command(gate["command"], service_env("config", redis_url, {}))
    assert bare.returncode != 0, bare.stdout + bare.stderr
    assert "no connection configured" in bare.stdout
    # The sandbox's env file: the gate passes.
    sandbox = dotenv(ROOT / "sandbox" / "compose.env")
    sandbox["CONNECTIONS_FILE"] = str(ROOT / sandbox["CONNECTIONS_FILE"].removeprefix("/srv/"))
    passed = run_service_command(gate["command"], service_env("config", redis_url, sandbox))
    assert passed.returncode == 0, passed.stdout + passed.stderr


@pytest.mark.integration
def test_compose_health_checks_tell_a_live_web_and_worker_from_a_dead_one(
    tmp_path: Path, redis_url: str, stack_factory: list
) -> None:
    from tests.conftest import make_stack

    services = compose()["services"]
    checks = {name: services[name]["healthcheck"] for name in ("web", "worker")}
    for check in checks.values():
        assert check["test"][0] == "CMD" and check["retries"] >= 1 and "start_period" in check
    web_cmd, worker_cmd = checks["web"]["test"][1:], checks["worker"]["test"][1:]
    conn = tmp_path / "c.toml"
    conn.write_text(
        '[[connection]]\nid = "health"\nwrite_keys = ["wk_health_key"]\n[connection.voucherify]\n'
        'app_id = "app-id-health"\nsecret_key = "secret-key-health"\nregion = "eu"\n'
        'api_url = "http://127.0.0.1:9"\n'
    )
    stack = make_stack(stack_factory, tmp_path, redis_url, conn)
    env = dict(stack.env)
    # Nothing running yet: both unhealthy.
    assert run_service_command(web_cmd, {**env, "PORT": str(free_port())}).returncode == 1
    assert run_service_command(worker_cmd, env).returncode == 1
    stack.web()
    port = stack.web_url.rsplit(":", 1)[1]
    web_ok = run_service_command(web_cmd, {**env, "PORT": port})
    assert web_ok.returncode == 0 and "HTTP 200" in web_ok.stdout, web_ok.stdout + web_ok.stderr
    worker = stack.worker()
    wait_until(
        lambda: run_service_command(worker_cmd, env).returncode == 0, timeout=20, what="worker healthy"
    )
    worker.stop(timeout=30)
    # It said goodbye on its way out: unhealthy at once (a killed one after 60 s).
    gone = run_service_command(worker_cmd, env)
    assert gone.returncode == 1 and "no worker of host" in gone.stdout, gone.stdout

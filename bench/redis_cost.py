"""What one event costs Redis (issue #19) and what one Redis carries (issue #23's fleet ceiling).

Pure parts (unit-tested in tests/bench/test_redis_cost.py): reading ``INFO commandstats``,
subtracting the bench's own commands, per-event sums, the top commands, parsing
``redis-benchmark --csv`` and weighting its rates by the connector's measured command mix.

The measuring parts run against the bench's own redis-server only (never the machine's 6379):
:class:`CommandMeter` resets the counters (``CONFIG RESETSTAT``) before a run and reads them after
it; :func:`run_redis_benchmark` drives ``redis-benchmark`` at that server.
"""

from __future__ import annotations

import csv
import io
import re
import shutil
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Commands the bench itself sends while it measures (the reset, the read, the client's hello);
# they are not the connector's cost.
BENCH_COMMANDS = frozenset({"config|resetstat", "config", "info", "hello", "client|setinfo", "select"})

# redis-benchmark's built-in tests, and which connector commands each one stands for: the same
# kind of work (a string write, a list push/pop, a hash field, a sorted-set entry...).  A command
# of the mix that none stands for is charged at the slowest rate measured (never flattering).
BENCHMARK_TESTS = ("ping_mbulk", "set", "get", "incr", "lpush", "rpop", "sadd", "hset", "zadd", "zpopmin")
STANDS_FOR: dict[str, tuple[str, ...]] = {
    "PING_MBULK": ("ping", "exists", "ttl", "pttl", "type", "expire", "pexpire", "expireat", "persist"),
    "SET": ("set", "setex", "psetex", "setnx", "mset", "del", "unlink", "getdel", "getset", "publish"),
    "GET": ("get", "mget", "strlen", "hget", "hmget", "hexists", "hlen", "llen", "scard", "zcard"),
    "INCR": ("incr", "incrby", "decr", "decrby", "incrbyfloat", "hincrby", "hincrbyfloat"),
    "LPUSH": ("lpush", "rpush", "lpushx", "rpushx", "ltrim", "lrem", "lset", "lindex", "lrange", "lmove"),
    "RPOP": ("rpop", "lpop", "brpop", "blpop", "rpoplpush", "brpoplpush", "blmove"),
    "SADD": ("sadd", "srem", "sismember", "smembers", "smismember", "spop"),
    "HSET": ("hset", "hmset", "hsetnx", "hdel", "hgetall", "hkeys", "hvals", "hscan"),
    "ZADD": ("zadd", "zrem", "zscore", "zincrby", "zrange", "zrangebyscore", "zrevrange", "zcount"),
    "ZPOPMIN": ("zpopmin", "zpopmax", "bzpopmin", "zremrangebyscore", "zremrangebyrank", "zmscore"),
}


def command_counts(info: Mapping[str, Any]) -> dict[str, int]:
    """``INFO commandstats`` -> {command: calls}.

    Takes what redis-py's ``info("commandstats")`` returns (``{"cmdstat_get": {"calls": 3, ...}}``)
    or the raw text (``cmdstat_get:calls=3,usec=...``).  Names are lower case; a subcommand keeps
    its parent (``config|resetstat``).  Redis 7 counts the commands a Lua script calls under
    their own names as well as the EVALSHA that ran them: both are work the server does."""
    out: dict[str, int] = {}
    for key, value in info.items():
        if not key.startswith("cmdstat_"):
            continue
        if isinstance(value, Mapping):
            calls = int(value.get("calls", 0))
        else:  # "calls=3,usec=..." as a string
            fields = dict(part.split("=", 1) for part in str(value).split(",") if "=" in part)
            calls = int(fields.get("calls", 0))
        out[key[len("cmdstat_") :].lower()] = calls
    return out


def parse_commandstats_text(text: str) -> dict[str, int]:
    """The raw ``INFO commandstats`` reply -> {command: calls}."""
    pairs: dict[str, Any] = {}
    for line in text.splitlines():
        name, sep, rest = line.strip().partition(":")
        if sep and name.startswith("cmdstat_"):
            pairs[name] = rest
    return command_counts(pairs)


def connector_counts(counts: Mapping[str, int], own: Mapping[str, int] | None = None) -> dict[str, int]:
    """The counts less the bench's own commands: its measuring commands and ``own`` (e.g. the
    GETs of its backlog polling), never below zero; commands left at zero are dropped."""
    out: dict[str, int] = {}
    for name, calls in counts.items():
        if name in BENCH_COMMANDS or name.startswith("config|"):
            continue
        left = calls - int((own or {}).get(name, 0))
        if left > 0:
            out[name] = left
    return out


def per_event(counts: Mapping[str, int], events: int) -> float:
    return sum(counts.values()) / events if events > 0 else 0.0


def top_commands(counts: Mapping[str, int], events: int, n: int = 8) -> list[tuple[str, int, float]]:
    """The ``n`` commands called most: (name, calls, calls per event), most first, ties by name."""
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
    return [(name, calls, round(calls / events, 3) if events > 0 else 0.0) for name, calls in ranked]


def parse_benchmark_csv(text: str) -> dict[str, float]:
    """``redis-benchmark --csv`` -> {TEST: requests/s}.  Lines that are not a result (warnings,
    the header) are skipped."""
    rates: dict[str, float] = {}
    for row in csv.reader(io.StringIO(text)):
        if len(row) < 2 or row[0] == "test":
            continue
        try:
            rates[row[0].strip().upper()] = float(row[1])
        except ValueError:
            continue
    return rates


def standing_test(command: str) -> str | None:
    """The redis-benchmark test that stands for a connector command (None: none does)."""
    base = command.split("|", 1)[0].lower()
    for test, commands in STANDS_FOR.items():
        if base in commands:
            return test
    return None


@dataclass
class MixCapacity:
    """Commands/s one Redis carries when the commands come in the connector's mix."""

    commands_per_second: float
    # Share of the mix (by calls) charged at the slowest measured rate: no test stands for it.
    unmapped_share: float
    unmapped: list[str] = field(default_factory=list)


def mix_capacity(rates: Mapping[str, float], mix: Mapping[str, int]) -> MixCapacity:
    """The weighted harmonic mean of the tests' rates, each command of ``mix`` at the rate of the
    test that stands for it: a command taking 1/rate seconds of the server, the mix takes
    sum(share / rate).  Commands no test stands for (EVALSHA, ...) take the slowest rate."""
    usable = {k: v for k, v in rates.items() if v > 0}
    if not usable:
        raise ValueError("no redis-benchmark rate to weigh")
    slowest = min(usable.values())
    total = sum(c for c in mix.values() if c > 0)
    if total <= 0:
        # No mix measured: the plain average of the tests (each command kind equally often).
        return MixCapacity(len(usable) / sum(1 / r for r in usable.values()), 0.0, [])
    seconds = 0.0
    unmapped_calls = 0
    unmapped: list[str] = []
    for command, calls in mix.items():
        if calls <= 0:
            continue
        test = standing_test(command)
        rate = usable.get(test, 0.0) if test else 0.0
        if rate <= 0:
            rate = slowest
            unmapped_calls += calls
            unmapped.append(command)
        seconds += (calls / total) / rate
    return MixCapacity(1 / seconds, unmapped_calls / total, sorted(unmapped))


def ceiling(commands_per_second: float, commands_per_event: float) -> float:
    """Events/s one Redis carries for the whole fleet: its commands/s over the commands per event."""
    return commands_per_second / commands_per_event if commands_per_event > 0 else 0.0


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/PID/stat."""
    import os

    with open(f"/proc/{pid}/stat") as fh:
        # The command name (field 2) may hold spaces: split after its closing parenthesis.
        fields = fh.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5)
    return ticks / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------------------------
# Measuring (bench's own redis-server only)


def difference(after: Mapping[str, int], before: Mapping[str, int]) -> dict[str, int]:
    """Counts of ``after`` less ``before`` (two reads of one window), zeros dropped."""
    out = {name: calls - int(before.get(name, 0)) for name, calls in after.items()}
    return {name: calls for name, calls in out.items() if calls > 0}


@dataclass
class Window:
    """What the connector sent one Redis between two reads, and the server's CPU time."""

    counts: dict[str, int]
    cpu_seconds: float
    seconds: float


class CommandMeter:
    """Counts what the connector sends one Redis during a run: ``start`` resets the server's
    counters, ``note_own`` records commands the bench itself sends meanwhile (its polling),
    ``read`` gives everything since ``start`` less the bench's own.  Also the redis-server's CPU
    seconds (its /proc stat) over the same time."""

    def __init__(self, client: Any, redis_pid: int | None) -> None:
        self.client = client
        self.redis_pid = redis_pid
        self.own: dict[str, int] = {}
        self.cpu_started = 0.0
        self.started = 0.0

    def start(self) -> None:
        self.own = {}
        self.client.config_resetstat()
        self.cpu_started = process_cpu_seconds(self.redis_pid) if self.redis_pid else 0.0
        self.started = time.monotonic()

    def note_own(self, command: str, calls: int = 1) -> None:
        self.own[command] = self.own.get(command, 0) + calls

    def read(self) -> Window:
        cpu = process_cpu_seconds(self.redis_pid) - self.cpu_started if self.redis_pid else 0.0
        counts = command_counts(self.client.info("commandstats"))
        return Window(connector_counts(counts, self.own), cpu, time.monotonic() - self.started)


def split_idle(idle: Window, total: Window) -> tuple[Window, dict[str, float]]:
    """A window that began with ``idle`` (processes up, no events) and ended as ``total``:
    (the loaded part, the idle background in commands/s by command)."""
    loaded = Window(
        difference(total.counts, idle.counts),
        total.cpu_seconds - idle.cpu_seconds,
        total.seconds - idle.seconds,
    )
    rate = {name: calls / idle.seconds for name, calls in idle.counts.items()} if idle.seconds > 0 else {}
    return loaded, rate


# Key segments that name a kind of key, not an id (connector/keys.py's layout).
KEY_MARKERS = frozenset(
    {
        "h",
        "s",
        "c",
        "m",
        "sz",
        "bytes",
        "data",
        "counts",
        "shared",
        "refs",
        "state",
        "lock",
        "swept",
        "idle",
        "queues",
        "n",
        "hint",
        "pause",
        "slow",
        "seen",
    }
)
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
_NO_KEY = frozenset(
    {"ping", "info", "time", "multi", "exec", "client", "select", "hello", "script", "config"}
)


def key_family(key: str, prefix: str = "connector:") -> str:
    """A key without its ids: ``connector:trace:h:bench-slow:e2e-1`` -> ``trace:h``,
    ``connector:ledger:bench-slow:k`` -> ``ledger``, ``voucherify.us1`` -> ``voucherify.us1``
    (kombu's queues and keys carry no prefix)."""
    if not key.startswith(prefix):
        return key.split(":", 1)[0] if key.startswith("_kombu") else key
    parts = key[len(prefix) :].split(":")
    return ":".join([parts[0], *(p for p in parts[1:] if p in KEY_MARKERS)])


def parse_monitor(lines: Any) -> tuple[dict[str, int], dict[str, int]]:
    """``MONITOR`` output -> (commands clients sent, commands scripts called), each counted by
    ``command key-family`` (``rpush trace:h``; a script by its first key, a command without
    keys by its name alone).

    A line is ``1700000000.123456 [0 127.0.0.1:51234] "SET" "k" "v"``; a script's call shows
    ``[0 lua]`` as its source.  Other lines (``OK``, blanks) are skipped."""
    sent: dict[str, int] = {}
    scripted: dict[str, int] = {}
    for line in lines:
        head, sep, rest = str(line).partition("] ")
        if not sep or "[" not in head or not rest.startswith('"'):
            continue
        args = _QUOTED.findall(rest)
        if not args:
            continue
        name = args[0].lower()
        key = None
        if name in ("eval", "evalsha", "evalsha_ro", "eval_ro", "fcall"):
            if len(args) > 3 and args[2].isdigit() and int(args[2]) > 0:
                key = args[3]
        elif name not in _NO_KEY and len(args) > 1:
            key = args[1]
        label = f"{name} {key_family(key)}" if key is not None else name
        source = head.split("[", 1)[1].split(" ", 1)[-1]
        into = scripted if source == "lua" else sent
        into[label] = into.get(label, 0) + 1
    return sent, scripted


class Monitor:
    """``redis-cli MONITOR`` into a file over a window: which commands clients sent (round
    trips) and which their scripts called.  MONITOR slows Redis down, so it is opt-in
    (BENCH_REDIS_MONITOR=1) and its windows' latency and CPU figures are not comparable."""

    def __init__(self, port: int, path: Any) -> None:
        self.path = path
        binary = shutil.which("redis-cli") or "redis-cli"
        self.out = open(path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([binary, "-h", "127.0.0.1", "-p", str(port), "monitor"], stdout=self.out)

    def stop(self) -> tuple[dict[str, int], dict[str, int]]:
        time.sleep(0.3)  # what the server already queued for the monitor
        self.proc.terminate()
        self.proc.wait(10)
        self.out.close()
        with open(self.path, errors="replace") as fh:
            return parse_monitor(fh)


def run_redis_benchmark(
    port: int, requests_per_test: int, clients: int = 50, pipeline: int = 1
) -> dict[str, float]:
    """redis-benchmark's built-in tests at 127.0.0.1:``port`` (the bench's own server; its keys
    are ``key:__rand_int__`` and friends, flushed by the phases after it)."""
    binary = shutil.which("redis-benchmark")
    if binary is None:
        raise FileNotFoundError("redis-benchmark is missing (Debian: apt-get install -y redis-tools)")
    out = subprocess.run(
        [
            binary,
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-n",
            str(requests_per_test),
            "-c",
            str(clients),
            "-P",
            str(pipeline),
            "-r",
            "100000",
            "-d",
            "200",
            "--csv",
            "-t",
            ",".join(BENCHMARK_TESTS),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    return parse_benchmark_csv(out)

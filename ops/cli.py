"""The ``connector`` command: operations on a running deployment.

::

    connector dlq list    [--connection C] [--direction D] [--reason R]
                          [--older-than 2h] [--newer-than 1d] [--limit N] [--json]
    connector dlq show    ID [--json]
    connector dlq replay  (ID... | filters | --all) [--remap] [--dry-run] [--json]
    connector dlq purge   (ID... | filters | --all) [--yes] [--dry-run] [--json]
    connector scheduler   [--interval S]         the Procfile's scheduler process
    connector check       [--json] [--offline] [--strict]   configuration, Redis, credentials
    connector send-test   [-c C] [--no-wait] [--timeout S]  one sample event through a connection
    connector stats       [--json]               queues, retry backlog, dead letters, rate limits
    connector map         [-c C] --event FILE [--send] [--json]   dry run of one event's mapping
    connector trace       ID [--json]            the journey of one event (received ... outcome)
    connector overview    [--json]               per connection: last hour / day by outcome and reason
    connector replay      FILE... [-c C] [--from T] [--to T] [--dry-run] [--resume] [--force]
                          archives (JSONL, gzip, '-') and customer CSVs through the live lanes
    connector healthcheck web|worker             this container's web or worker alive (compose health checks)

``check``, ``send-test``, ``stats`` and ``map`` read the configuration as the processes do.
With none of REDIS_URL, CONNECTIONS_FILE, INGEST_WRITE_KEYS, VOUCHERIFY_APP_ID set, every
command uses the ``make run`` running from this checkout (``.run/cli.env``, see
:mod:`ops.runfile`) and says so on stderr.

Wiring only: each command lives in its own module (``ops.dlq``, ``ops.scheduler``,
``ops.check``, ``ops.send_test``, ``ops.stats``, ``ops.mapcmd``, ``ops.tracecmd``,
``ops.overviewcmd``, ``ops.healthcheck``).
"""

from __future__ import annotations

import importlib
import sys

import click

from connector import config
from ops import runfile

# name -> "module:command".  Loaded when used: `connector scheduler` must set up multiprocess
# metrics before anything imports connector.metrics, and `connector dlq ...` needs no more
# than its own module.
COMMANDS = {
    "check": "ops.check:check",
    "dlq": "ops.dlq:dlq",
    "healthcheck": "ops.healthcheck:healthcheck",
    "map": "ops.mapcmd:map_command",
    "overview": "ops.overviewcmd:overview_command",
    "regulate": "ops.regulatecmd:regulate",
    "regulations": "ops.regulatecmd:regulations_command",
    "replay": "ops.replay:replay",
    "resume": "ops.resume:resume",
    "scheduler": "ops.scheduler:scheduler",
    "send-test": "ops.send_test:send_test",
    "stats": "ops.stats:stats",
    "trace": "ops.tracecmd:trace_command",
}


class _Commands(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, _, name = target.partition(":")
        command: click.Command = getattr(importlib.import_module(module), name)
        return command


@click.group(cls=_Commands)
def main() -> None:
    """Segment <-> Voucherify connector: operations.

    With no REDIS_URL and no connection configured in the shell, commands use the `make run`
    running from this checkout (it writes .run/cli.env) and say so on stderr.
    """
    try:
        note = runfile.apply(config.environment())
    except runfile.RunFileError as exc:
        raise click.ClickException(str(exc)) from None
    if note:
        click.echo(f"connector: {note}", err=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

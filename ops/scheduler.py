"""``connector scheduler``: the scheduler process (the Procfile runs it)."""

from __future__ import annotations

import click

from connector import multiprocess


@click.command()
@click.option(
    "--interval", type=float, default=None, help="seconds between idle ticks (CONNECTOR_SCHEDULER_INTERVAL)"
)
def scheduler(interval: float | None) -> None:
    """Move due parked work back onto Celery queues and sweep Segment outboxes (runs forever)."""
    # Before connector.metrics is imported (by the scheduler module): shared metrics directory.
    multiprocess.setup("scheduler")

    from connector import fleet, redisconn
    from connector.celery_app import create_celery
    from connector.config import ConfigError, exit_on_config_error
    from connector.keys import Keys
    from connector.logs import configure_logging
    from connector.publish import publisher
    from workers.delivery.scheduler import Scheduler, connection_queues
    from workers.settings import load_settings
    from workers.targets.probe import pause_prober

    configure_logging("scheduler")
    # The scheduler publishes work to the connections' queues: with a configuration the web and
    # the workers would refuse, it must not start either (and never say "started").
    try:
        settings = load_settings()
    except ConfigError as exc:
        exit_on_config_error(exc, "scheduler")
    config = settings.scheduler
    if interval is not None:
        config.interval = interval
    target = settings.redis
    client = redisconn.client(
        target,
        settings.redis_tls_verify,
        socket_connect_timeout=2,
        socket_timeout=10,
        health_check_interval=10,
    )
    keys = Keys(settings.key_prefix)
    # What the scheduler counts for the fleet (connector.fleet): every few seconds and at its end.
    fleet.configure(client, keys, settings.tuning.metrics_flush)
    click.echo(f"scheduler: redis {redisconn.describe(target)}, prefix {keys.prefix!r}", err=True)
    app = create_celery(target, settings.redis_tls_verify, settings.broker, settings.key_prefix)
    runner = Scheduler(client, keys, publisher(app), config, connections=connection_queues(settings))
    runner.duties.append(pause_prober(settings, client, keys))
    runner.install_signal_handlers()
    runner.run()
    fleet.flush()

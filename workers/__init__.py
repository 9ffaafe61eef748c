"""Celery workers: mapping, delivery, retries (the worker process side of the connector)."""

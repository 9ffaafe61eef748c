"""Shared test helpers (real processes, fakes, brokers...): import them as ``tests.support.<module>``."""

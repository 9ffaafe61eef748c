"""Shared test helpers (real processes, fakes, brokers...): import them as ``tests.support.<module>``."""

from pathlib import Path

# tests/: where the data cases (mapping_cases/, fixtures/) live, whatever folder a test is in.
TESTS_DIR = Path(__file__).resolve().parents[1]

"""What a worker process knows of its live budgets' last answers, so that storing them in Redis
costs no round trip per call (:mod:`workers.delivery.budgets` holds the rules).

An answer is stored at once when it changes what may be granted: the first of a window (ends a
probe), an answer with no rate-limit headers (the server sends none: only the own counters
apply), or one that says the credit is spent.  An answer that only refines the state (the shop
spent a few calls meanwhile) rides with the process's next round trip for that budget; one that
says no more than what was stored is dropped.  Redis keeps the lowest estimate of the window
whatever the order the answers arrive in.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

WINDOW_SLACK_MS = 500  # two answers' window ends this close apart: the same window


@dataclass
class _Reading:
    end_ms: int  # the window's end (0: the server sends no headers)
    level: float  # credit + grant number: lower when the shop has spent calls since
    top: int = 0  # the highest grant number this process was handed
    pending: tuple[str, int, int] | None = None  # (credit, seq, end ms) for the next round trip


class Readings:
    """Per (connection, budget): the last answer this process stored or holds."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known: dict[tuple[str, str], _Reading] = {}

    def take_pending(self, connection_id: str, name: str) -> list[object]:
        """The answer held for the next round trip: [credit, seq, window end ms] ('-': none)."""
        with self._lock:
            known = self._known.get((connection_id, name))
            if known is None or known.pending is None:
                return ["-", 0, 0]
            credit, seq, end = known.pending
            known.pending = None
            return [credit, seq, end]

    def granted(self, connection_id: str, name: str, seq: int, probing: bool) -> None:
        with self._lock:
            if probing:  # Redis knows no answer of this window: the next one is stored at once
                self._known.pop((connection_id, name), None)
            elif (known := self._known.get((connection_id, name))) is not None:
                known.top = max(known.top, seq)

    def store_now(self, connection_id: str, name: str, credit: str, seq: int, end_ms: int) -> bool:
        """False when the answer may wait for the next round trip (or says nothing new)."""
        slot = (connection_id, name)
        with self._lock:
            known = self._known.get(slot)
            if credit == "":  # no headers: stored once, then nothing new to say
                if known is not None and known.end_ms == 0:
                    return False
                self._known[slot] = _Reading(0, 0.0)
                return True
            top = known.top if known is not None else 0
            level = float(credit) + (seq or top)
            if known is None or abs(known.end_ms - end_ms) > WINDOW_SLACK_MS:
                self._known[slot] = _Reading(end_ms, level, max(seq, top))
                return True
            if level >= known.level:
                return False  # says no more than what is stored
            known.level = level
            if float(credit) - (known.top - seq if seq else 0) <= 0:
                return True  # the credit is spent: every process must stop now
            known.pending = (credit, seq, end_ms)
            return False

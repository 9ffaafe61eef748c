"""The sandbox bodies on the status page: a configured credential that would appear in a recorded
body is replaced, long bodies are cut (the page is rendered by the server from the fakes' records)."""

from __future__ import annotations

from app.status import MAX_BODY_CHARS, _shown_body


def test_credentials_in_a_body_are_replaced_and_long_bodies_cut() -> None:
    shown = _shown_body({"body": {"writeKey": "a-configured-secret-1", "n": 1}}, ["a-configured-secret-1"])
    assert "a-configured-secret-1" not in shown and "<redacted>" in shown and '"n": 1' in shown
    assert _shown_body({"body": None, "raw": "not json"}, []) == "not json"
    assert len(_shown_body({"body": "x" * 10 * MAX_BODY_CHARS}, [])) <= MAX_BODY_CHARS + 2
    assert _shown_body({}, []) == ""

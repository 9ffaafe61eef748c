"""The ingest baseline: the same web stack (gunicorn + Flask, same gunicorn.conf.py) doing only
what cannot be avoided -- read the body, parse it with orjson, LPUSH it to Redis, answer JSON.

    gunicorn bench.baseline_app:app --config gunicorn.conf.py      (REDIS_URL from the env)
"""

from __future__ import annotations

import os

import orjson
import redis
from flask import Flask, Response, jsonify, request

app = Flask(__name__)
_redis = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))


@app.post("/v1/<kind>")
def ingest(kind: str) -> Response:
    raw = request.get_data()
    body = orjson.loads(raw)
    if not isinstance(body, dict):
        return jsonify({"code": "not_an_object"}), 400  # type: ignore[return-value]
    _redis.lpush("bench:baseline", raw)
    return jsonify({"success": True})


@app.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})

"""Sandbox fakes: Voucherify and Segment Tracking API look-alikes on loopback, for tests and ``make run``.

- ``python -m sandbox.fake_voucherify --port N --app-id ID --secret-key KEY``
- ``python -m sandbox.fake_segment --port N --write-key KEY``

Both record every request and are controlled over HTTP under ``/__fake/`` (see ``sandbox.core``).
"""

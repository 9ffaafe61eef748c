"""Sandbox fakes: Voucherify and Segment Tracking API look-alikes on loopback, for tests and ``make run``.

- ``python -m sandbox.fake_voucherify --port N --app-id ID --secret-key KEY [--plan P ...]``
- ``python -m sandbox.fake_segment --port N --write-key KEY``

Both record every request and are controlled over HTTP under ``/__fake/`` (see ``sandbox.core``).
The fake Voucherify also enforces Voucherify's quotas (``sandbox.quota``, ``sandbox.plans``), runs
bulk async actions (``sandbox.async_actions``) and revokes credentials on demand; its own control
endpoints are in ``sandbox.voucherify_admin``.

Modules: ``wire`` (requests, answers, JSON), ``faults`` (scripts, delays), ``core`` (the WSGI base
app and its control API), ``server`` (serving, shared command line), ``customers`` (the store),
``voucherify_endpoints`` (what the fake Voucherify answers), ``fake_voucherify`` (its routing,
credentials and quota), ``fake_segment``, ``schemas`` (Voucherify's request bodies).
"""

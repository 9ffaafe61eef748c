"""gunicorn entry point: ``gunicorn ops.wsgi:app``.

It lives with the operator commands because it wires two floors: the web (``app``) and the
workers' mapping language, whose checks reject a bad subscription before the web takes any
request (``app`` and ``workers`` never import each other).

A configuration that does not load stops gunicorn here (the app is preloaded, see
gunicorn.conf.py) with the list of every problem and exit status 2 -- not a traceback.
"""

from app import create_app
from connector.config import ConfigError, exit_on_config_error
from connector.logs import configure_logging
from workers.settings import load_settings

configure_logging("web")
try:
    _settings = load_settings()
except ConfigError as exc:
    exit_on_config_error(exc, "web")
app = create_app(_settings)

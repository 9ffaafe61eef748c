"""gunicorn entry point: ``gunicorn app.wsgi:app``."""

from app import create_app
from connector.logs import configure_logging

configure_logging("web")
app = create_app()

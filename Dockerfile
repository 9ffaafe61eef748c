# One image for the three process types (web, worker, scheduler) and the sandbox's fakes.
FROM python:3.11-slim
WORKDIR /srv
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

# Never root: an unprivileged user owns nothing but the metrics directory (a volume shared by
# the processes, see docker-compose.yml).  Numeric, so orchestrators can check runAsNonRoot.
RUN groupadd --system --gid 10001 connector \
 && useradd --system --uid 10001 --gid 10001 --home-dir /srv --no-create-home connector \
 && mkdir -p /var/run/connector-metrics /srv/config \
 && chown 10001:10001 /var/run/connector-metrics

# The pinned dependencies first (a layer that survives code changes), then the project itself.
COPY requirements.txt ./
RUN grep -v '^\.$' requirements.txt > /tmp/pinned.txt && pip install -r /tmp/pinned.txt && rm /tmp/pinned.txt
COPY pyproject.toml README.md ./
COPY app ./app
COPY workers ./workers
COPY connector ./connector
COPY ops ./ops
COPY sandbox ./sandbox
COPY gunicorn.conf.py Procfile ./
RUN pip install --no-deps .

USER 10001:10001
EXPOSE 8000
CMD ["gunicorn", "ops.wsgi:app", "--config", "gunicorn.conf.py"]

FROM python:3.11-slim
WORKDIR /srv
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY pyproject.toml README.md ./
COPY app ./app
COPY workers ./workers
COPY connector ./connector
COPY sandbox ./sandbox
COPY gunicorn.conf.py Procfile ./
RUN pip install --no-cache-dir .
EXPOSE 8000
CMD ["gunicorn", "app.wsgi:app", "--config", "gunicorn.conf.py"]

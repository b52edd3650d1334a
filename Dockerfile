# One image for the worker and the webhooks service (docker-compose.yml picks the command).
# The image gets the whole project (minus what .dockerignore leaves out), so whatever an
# entry point reads at run time (migrations/, alembic.ini, journeys/, customers.py, ...)
# is there; tests/test_compose.py starts the entry points from such a copy.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CASCADE_LOG_FORMAT=json
WORKDIR /app

# Dependencies first, from pyproject.toml alone: a code change does not reinstall them.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt

COPY . .
RUN pip install --no-deps . \
    && useradd --system --uid 10001 --home-dir /app cascade \
    && mkdir -p data && chown cascade data
USER cascade

CMD ["python", "worker.py"]

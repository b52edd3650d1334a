# One image for the worker and the webhooks service (docker-compose.yml picks the command).
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONUNBUFFERED=1 CASCADE_LOG_FORMAT=json
COPY pyproject.toml README.md ./
COPY core core
COPY models models
COPY workflows workflows
COPY activities activities
COPY channels channels
COPY webhooks webhooks
COPY journeys journeys
COPY worker.py starter.py demo.py ./
RUN pip install --no-cache-dir .
CMD ["python", "worker.py"]

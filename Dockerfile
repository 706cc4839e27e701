# Placeholder: the hardened multi-stage image (non-root, read-only root filesystem) is the subject of
# the deployment issue. This minimal image runs a worker; it is not yet hardened or tested.
FROM python:3.11.7-slim
WORKDIR /opt/ftp-pooler
COPY pyproject.toml README.md ./
COPY app ./app
COPY agents ./agents
COPY models ./models
COPY pools ./pools
RUN pip install --no-cache-dir .
USER 1000:1000
ENTRYPOINT ["faust", "-A", "app", "worker", "-l", "info"]

# FTP Pooler worker image.
#   build:   docker build -t ftp-pooler:0.1.0 .
#   run:     docker run --read-only -v "$PWD/connections.ini:/etc/ftp-pooler/connections.ini:ro" \
#              -e FTP_POOLER_KAFKA__BOOTSTRAP_SERVERS=kafka:9092 ftp-pooler:0.1.0
# The build stage resolves the dependencies named in pyproject.toml into a virtualenv; the runtime
# stage gets only that virtualenv (no pip, no setuptools, no caches, no compiler) and runs as uid/gid
# 1000. It writes only to /data/storage (local connection files) and /data/faust (Faust's data
# directory), so it runs with a read-only root filesystem.

# Both stages use the same base (tests/deploy checks it): the virtualenv's interpreter is a symlink
# into the base image's /usr/local.
FROM python:3.11.14-slim-trixie AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# The runtime virtualenv gets no pip of its own: the build stage's pip installs into it.
RUN python -m venv --without-pip /opt/ftp-pooler
# Dependencies first, read from pyproject.toml itself, so this layer survives code-only changes.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; print('\n'.join(deps))" > requirements.txt \
    && pip --python /opt/ftp-pooler/bin/python install --no-cache-dir --requirement requirements.txt
COPY app ./app
COPY agents ./agents
COPY models ./models
COPY pools ./pools
RUN pip --python /opt/ftp-pooler/bin/python install --no-cache-dir --no-deps . \
    && /opt/ftp-pooler/bin/python -c "import app.settings, agents, models, pools"

FROM python:3.11.14-slim-trixie
LABEL org.opencontainers.image.title="ftp-pooler" \
      org.opencontainers.image.description="Kafka-driven FTP transfer worker (Faust)"
# The base image's own pip and setuptools go too: nothing installs anything at run time. The two
# writable directories are created here, owned by the runtime user, and are the only volumes.
RUN python -m pip uninstall --yes --quiet pip setuptools wheel \
    && groupadd --gid 1000 ftp-pooler \
    && useradd --uid 1000 --gid 1000 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin --no-log-init ftp-pooler \
    && mkdir -p /data/storage /data/faust /etc/ftp-pooler \
    && chown 1000:1000 /data/storage /data/faust
COPY --from=build /opt/ftp-pooler /opt/ftp-pooler
# FTP_POOLER_CONFIG (the optional YAML file) is left unset: the Kubernetes manifests mount their
# ConfigMap and set it; without it, defaults and FTP_POOLER_* variables apply.
ENV PATH=/opt/ftp-pooler/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    FTP_POOLER_CONNECTIONS=/etc/ftp-pooler/connections.ini \
    FTP_POOLER_WORKER__DATA_DIR=/data/faust
WORKDIR /data
VOLUME ["/data/storage", "/data/faust"]
USER 1000:1000
# api.port and metrics.port defaults
EXPOSE 8080 9090
# Liveness for plain `docker run`; Kubernetes uses its own probes. The port comes from the same
# settings the worker reads (config file and environment).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; from app.settings import load_settings; urllib.request.urlopen(f'http://127.0.0.1:{load_settings().api.port}/health', timeout=4)"]
ENTRYPOINT ["faust", "-L", "uvloop", "-A", "app", "worker"]
CMD ["-l", "info"]

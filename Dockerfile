# FTP Pooler worker image.
#   build:   make image            (docker, podman or buildah, whichever the machine has; README, Deploy)
#            docker build -t ftp-pooler:0.1.0 .
#   run:     docker run --read-only -v "$PWD/connections.ini:/etc/ftp-pooler/connections.ini:ro" \
#              -e FTP_POOLER_KAFKA__BOOTSTRAP_SERVERS=kafka:9092 ftp-pooler:0.1.0
# The build stage installs the locked dependencies (requirements.lock: exact versions, sha256
# hashes) into a virtualenv; the runtime stage gets only that virtualenv (no pip, no setuptools, no
# caches, no compiler) and runs as uid/gid 1000. It writes only to /data/storage (local connection
# files) and /data/faust (Faust's data directory), so it runs with a read-only root filesystem.

# Both stages use the same base (tests/deploy checks it): the virtualenv's interpreter is a symlink
# into it (/usr/local/bin/python3 in the official image, /usr/bin/python3 in a Debian one). Where the
# official image's registry is out of reach, `make image IMAGE_BASE=debian` builds a base of Debian
# bookworm's python3 (3.11) with mmdebstrap and passes it here (scripts/image-base.sh).
ARG BASE_IMAGE=python:3.11.14-slim-trixie
#checkov:skip=CKV_DOCKER_7:The base is the BASE_IMAGE argument, whose default above names a patch-version tag (tests/deploy checks it); checkov cannot see through the argument.

FROM ${BASE_IMAGE} AS build
# A build machine whose HTTPS goes through an inspecting proxy names its CA bundle, mounted for the
# build only (make image does; README, Deploy); empty: pip's own bundle. The runtime stage never
# sees it.
ARG BUILD_CA_BUNDLE=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# The build tools (pip, setuptools, wheel) get a virtualenv of their own, pinned by
# requirements-build.lock; their pip installs requirements.lock into the runtime virtualenv, which
# gets no pip of its own. Every file is checked against its hash. Dependencies come first, so this
# layer survives code-only changes.
COPY requirements.lock requirements-build.lock ./
RUN if [ -n "$BUILD_CA_BUNDLE" ]; then export PIP_CERT="$BUILD_CA_BUNDLE"; fi \
    && python3 -m venv /opt/build \
    && /opt/build/bin/python -m pip install --no-cache-dir --require-hashes --no-deps \
       --requirement requirements-build.lock \
    && python3 -m venv --without-pip /opt/ftp-pooler \
    && /opt/build/bin/pip --python /opt/ftp-pooler/bin/python install --no-cache-dir \
       --require-hashes --no-deps --requirement requirements.lock
COPY pyproject.toml README.md ./
COPY app ./app
COPY agents ./agents
COPY models ./models
COPY pools ./pools
# The topics tool the Kubernetes topics Job runs (`python -m scripts.topics`), and nothing else of
# scripts/ (the rest is dev tooling): it goes into the virtualenv's site-packages beside the wheel.
COPY scripts/__init__.py scripts/topics.py ./scripts/
# The project itself: a wheel built offline with the locked setuptools, installed without deps.
RUN /opt/build/bin/pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /tmp/wheels . \
    && /opt/build/bin/pip --python /opt/ftp-pooler/bin/python install --no-cache-dir --no-deps \
       /tmp/wheels/ftp_pooler-*.whl \
    && cp -r scripts "$(/opt/ftp-pooler/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/" \
    && /opt/ftp-pooler/bin/python -c "import app.settings, agents, models, pools, scripts.topics"

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="ftp-pooler" \
      org.opencontainers.image.description="Kafka-driven FTP transfer worker (Faust)"
# The base image's own pip and setuptools go too, where it has them (the official image does,
# Debian's python3 has none): nothing installs anything at run time. The two writable directories
# are created here, owned by the runtime user, and are the only volumes.
RUN if python3 -m pip --version >/dev/null 2>&1; then \
        python3 -m pip uninstall --yes --quiet pip setuptools wheel; \
    fi \
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
# Liveness for plain `docker run` and podman; Kubernetes uses its own probes. The port comes from
# the same settings the worker reads (config file and environment); the worker refuses a
# -p/--web-port that differs from it. HEALTHCHECK is Docker's format: `make image` builds that
# format with podman and buildah too (OCI drops it), and `make test-image` checks it is there.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; from app.settings import load_settings; urllib.request.urlopen(f'http://127.0.0.1:{load_settings().api.port}/health', timeout=4)"]
ENTRYPOINT ["faust", "-L", "uvloop", "-A", "app", "worker"]
CMD ["-l", "info"]
# Creating the topics with the same settings: docker run --entrypoint python ... -m scripts.topics

# syntax=docker/dockerfile:1
#
# recsys serving image: `recsys serve` (Ray Serve + FastAPI) on port 8000, CPU-only torch.
#
#   docker build -t recsys .                                          # mount artifacts at run
#   docker build -t recsys --build-arg ARTIFACTS=.recsys/artifacts .  # or bake them in
#   docker run --init --shm-size=2g -p 8000:8000 \
#     -e RECSYS_STORE__URL=redis://redis:6379/0 -e RECSYS_STREAM__BOOTSTRAP=kafka:9092 \
#     -v "$PWD/.recsys/artifacts:/app/artifacts" recsys
#
# Redis and Kafka are external services: the image holds no redis-server or broker.
# --init reaps the processes Ray forks; --shm-size gives Ray's object store real shared memory
# (Docker's default /dev/shm is 64 MiB). The same image runs the online updater:
#   docker run --init recsys updater
# scripts/docker_install_check.py replays this builder stage's `pip install` lines in a temp
# venv, so keep them plain `RUN pip install ...` commands.

FROM python:3.11-slim AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# torch first, pinned, from the CPU index: the project's looser `torch>=2.4,<3` is then already
# satisfied, and pip never pulls the gigabytes of CUDA wheels PyPI's torch depends on.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

WORKDIR /src
COPY pyproject.toml README.md ./
COPY recsys ./recsys
# A regular (not editable) install, without the dev and load extras: the venv is all that
# the final stage takes.
RUN pip install .


FROM python:3.11-slim

# Path (in the build context) of an artifact root to bake in; empty keeps the placeholder,
# and the artifacts are then expected as a volume mounted on /app/artifacts.
ARG ARTIFACTS=

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RECSYS_ARTIFACTS__ROOT=/app/artifacts

RUN groupadd --gid 10001 recsys \
    && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/recsys \
       --shell /usr/sbin/nologin recsys

COPY --from=builder /opt/venv /opt/venv

WORKDIR /app
# Owned by the service user: the online updater publishes new model versions here.
COPY --chown=10001:10001 ${ARTIFACTS:-docker/no-artifacts} /app/artifacts/

USER 10001:10001
EXPOSE 8000

# `recsys serve` shuts Ray Serve down cleanly on Ctrl-C (SIGINT); SIGTERM would kill it
# without that, leaving Ray's processes to the runtime.
STOPSIGNAL SIGINT

# Liveness only (/readyz also needs the user-state store). Replicas load models before Serve
# answers, hence the long start period. slim has no curl: Python's urllib fails on non-2xx.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

ENTRYPOINT ["recsys"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]

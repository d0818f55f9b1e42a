# syntax=docker/dockerfile:1
#
# sla-daemon container image.
#
#   docker build -t sla-daemon .
#   docker run --rm -v "$PWD/secrets:/run/secrets:ro" -e CREDENTIALS_DIRECTORY=/run/secrets \
#     sla-daemon migrate
#   docker run -d --name sla-daemon --stop-timeout 30 -p 127.0.0.1:9108:9108 \
#     -v "$PWD/secrets:/run/secrets:ro" -e CREDENTIALS_DIRECTORY=/run/secrets \
#     -e TWILIO_ACCOUNT_SID=AC... -e TWILIO_WHATSAPP_NUMBER=+14155238886 sla-daemon
#
# Secrets are files, not -e (which docker inspect and /proc show): secrets/DATABASE_URL
# and secrets/TWILIO_AUTH_TOKEN, each named like its variable, one value per file.
#
# Supply chain: the base image is pinned by digest (its tag beside it: a tag can be
# re-pointed, a digest cannot; to update, take the digest of the new tag's index with
# `docker buildx imagetools inspect python:3.11-slim-bookworm`), and every Python
# package comes from a lock file with hashes: requirements.lock (what the image runs)
# and requirements-build.lock (what builds the wheel). Regenerate them as the README
# says (Container) after changing pyproject.toml.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b

# --- builder: the project's wheel, built by locked, hash-checked build tools ---------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY requirements-build.lock requirements.lock ./
RUN pip install --require-hashes -r requirements-build.lock
# README.md is the package's long description; sql/ goes into the wheel as sla_daemon/sql.
COPY pyproject.toml README.md ./
COPY sql ./sql
COPY sla_daemon ./sla_daemon
RUN pip wheel --no-build-isolation --no-deps --wheel-dir /wheels . \
 && cp requirements.lock /wheels/

# --- runtime ------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="sla-daemon" \
      org.opencontainers.image.description="SLA deadlines, escalation and WhatsApp status notifications for service-desk tickets in PostgreSQL" \
      org.opencontainers.image.licenses="MIT"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    SLA_DAEMON_METRICS_ADDRESS=0.0.0.0:9108 \
    SLA_DAEMON_SHUTDOWN_GRACE_SECONDS=8
# The locked dependencies, each file checked against its hash (wheels only: no compiler,
# nothing built here); then the wheel alone, from the builder, without dependencies.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --require-hashes --only-binary=:all: -r /wheels/requirements.lock \
 && pip install --no-index --no-deps /wheels/sla_daemon-*.whl \
 && groupadd --system --gid 10001 sla-daemon \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin sla-daemon
# Numeric, so orchestrators can check runAsNonRoot.
USER 10001:10001

EXPOSE 9108
# sla-daemon healthcheck: /healthz on SLA_DAEMON_METRICS_ADDRESS (503 when the daemon
# is unhealthy: database unreachable, a loop failing); passes with a note when metrics
# are off, since there is nothing to ask.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["sla-daemon", "healthcheck"]

# Exec form: the daemon is PID 1 and gets SIGTERM itself. It installs its own SIGTERM
# and SIGINT handlers (PID 1 has no default signal actions) and starts no child
# processes, so no init (tini) is needed to reap zombies.
# docker stop waits 10 s before SIGKILL by default: the grace above (8 s) fits inside
# it; with --stop-timeout 30 (compose: stop_grace_period: 30s) raise it to 10 or more.
STOPSIGNAL SIGTERM
ENTRYPOINT ["sla-daemon"]
CMD ["run"]

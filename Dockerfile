# syntax=docker/dockerfile:1
#
# sla-daemon container image.
#
#   docker build -t sla-daemon .
#   docker run --rm -e DATABASE_URL=postgresql://... sla-daemon migrate
#   docker run -d --name sla-daemon --stop-timeout 30 -p 127.0.0.1:9108:9108 \
#     -e DATABASE_URL=postgresql://... -e TWILIO_ACCOUNT_SID=... \
#     -e TWILIO_WHATSAPP_NUMBER=... -e TWILIO_AUTH_TOKEN=... sla-daemon
#
# Secrets can also be files: mount them in a directory and set CREDENTIALS_DIRECTORY
# to it; each file is named like its variable (DATABASE_URL, TWILIO_AUTH_TOKEN, ...).

ARG PYTHON_IMAGE=python:3.11-slim

# --- builder: the project's wheel and every dependency's wheel -------------------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# README.md is the package's long description; sql/ goes into the wheel as sla_daemon/sql.
COPY pyproject.toml README.md ./
COPY sql ./sql
COPY sla_daemon ./sla_daemon
RUN pip wheel --wheel-dir /wheels .

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
# Install from the builder's wheels only: no compiler, no network, no wheels left behind.
# (Versions are those the builder resolved; pinning here would add nothing.)
# hadolint ignore=DL3013
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels sla-daemon \
 && groupadd --system --gid 10001 sla-daemon \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin sla-daemon
# Numeric, so orchestrators can check runAsNonRoot.
USER 10001:10001

EXPOSE 9108
# 503 when the daemon is unhealthy (database unreachable, a loop stopped); follows
# SLA_DAEMON_METRICS_ADDRESS's port if it is changed.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('SLA_DAEMON_METRICS_ADDRESS', '').rpartition(':')[2] or '9108'; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4)"]

# Exec form: the daemon is PID 1 and gets SIGTERM itself. It installs its own SIGTERM
# and SIGINT handlers (PID 1 has no default signal actions) and starts no child
# processes, so no init (tini) is needed to reap zombies.
# docker stop waits 10 s before SIGKILL by default: the grace above (8 s) fits inside
# it; with --stop-timeout 30 (compose: stop_grace_period: 30s) raise it to 10 or more.
STOPSIGNAL SIGTERM
ENTRYPOINT ["sla-daemon"]
CMD ["run"]

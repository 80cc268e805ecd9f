# syntax=docker/dockerfile:1
#
# One image for every codex-hub role; the command picks the role:
#
#   docker run ... codex-hub codex-hub serve            # the hub alone
#   docker run ... codex-hub codex-hub executor         # an executor node (HUB_URL)
#   docker run ... codex-hub codex-hub bridge slack     # a Slack bridge node
#   docker run ... codex-hub codex-hub bridge telegram  # a Telegram bridge node
#   docker run ... codex-hub                            # `codex-hub up`: everything in one
#
# Mount points (see compose.yaml and deploy/k8s/ for the volumes):
#   /data/hub         the hub's SQLite store (HUB_DB)
#   /data/codex-home  codex's login and sessions (CODEX_HOME); log in once with
#                     `codex login --device-auth` inside an executor container
#   /data/work        where codex works: a workspace per conversation (WORKSPACE_ROOT)
# No VOLUME instruction on purpose: it would give every container (bridges included)
# anonymous volumes that outlive it; mount named volumes where they are wanted.
#
# The hub binds 127.0.0.1 by default, which inside a container only the container
# itself reaches. To publish it, set HUB_HOST=0.0.0.0 (compose.yaml does, for the hub
# service); the hub then refuses to start unless HUB_TOKEN and HUB_API_KEYS are set.

ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# OS layer, changes least often. git and openssh-client are what codex (and the SSH
# transport's users) reach for first; nodejs/npm install codex and serve the npx-based
# tools codex may run; tini is PID 1 so codex's child processes are reaped.
# Workspaces are often mounted from the host with another owner and git would refuse
# them as "dubious ownership"; the container is single-user, so it trusts them.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ca-certificates git openssh-client nodejs npm tini \
 && rm -rf /var/lib/apt/lists/* \
 && git config --system safe.directory '*'

# The non-root user every process runs as (USER below) owns the data directories;
# named volumes copy that ownership on first use, Kubernetes gets it through fsGroup.
RUN groupadd --system --gid 10001 codex \
 && useradd --system --uid 10001 --gid codex --home-dir /home/codex --create-home \
      --shell /bin/bash codex \
 && mkdir -p /data/hub /data/codex-home /data/work \
 && chown -R codex:codex /data

# codex, in /opt, exactly as tools/package-lock.json pins it (`npm ci`, integrity
# checked): the same build `make test` tested. CODEX_BIN points at the native binary
# rather than the npm wrapper: the wrapper's child survives a kill of the wrapper (see
# the Makefile). The platform package's path holds the target triple, so it is resolved
# here, at build time, and given a fixed name on PATH (`codex login` in a shell finds it).
COPY tools/package.json tools/package-lock.json /opt/codex/
RUN npm ci --prefix /opt/codex --omit=dev --no-audit --no-fund --loglevel=error \
 && native="$(ls -d /opt/codex/node_modules/@openai/codex-linux-*/vendor/*/bin/codex | head -n 1)" \
 && test -x "$native" \
 && ln -s "$native" /usr/local/bin/codex \
 && npm cache clean --force \
 && rm -rf /root/.npm
ENV CODEX_BIN=/usr/local/bin/codex

# uv, the installer, pinned with hashes like everything it installs.
COPY tools/uv-requirements.txt /tmp/uv-requirements.txt
RUN pip install --require-hashes -r /tmp/uv-requirements.txt \
 && rm /tmp/uv-requirements.txt

# Python dependencies before the source, so editing code reuses this layer: exactly
# what uv.lock pins (hashes checked), runtime only, into /opt/venv. --frozen: the lock
# is used as it is, never re-resolved, so the image holds what CI tested.
WORKDIR /app
ENV UV_PROJECT_ENVIRONMENT=/opt/venv \
    UV_PYTHON_DOWNLOADS=never \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1
COPY pyproject.toml uv.lock ./
RUN uv sync --frozen --no-dev --no-install-project
ENV PATH=/opt/venv/bin:$PATH

# The source, then the project itself from the same lock, as a regular (non-editable)
# install: the monitor page travels inside the package as package data.
COPY README.md ./
COPY wire ./wire
COPY kernel ./kernel
COPY hub ./hub
COPY executor ./executor
COPY bridges ./bridges
COPY codex_hub ./codex_hub
COPY monitor ./monitor
RUN uv sync --frozen --no-dev --no-editable \
 && codex-hub --help > /dev/null

USER codex
ENV HOME=/home/codex \
    HUB_DB=/data/hub/codex-hub.db \
    CODEX_HOME=/data/codex-home \
    WORKSPACE_ROOT=/data/work

EXPOSE 8080

# Alive means /healthz answers; urlopen raises (exit 1) on a refused connection or an
# error status. Only the hub roles (serve, up) serve HTTP: compose.yaml switches this
# check off for executor and bridge containers (Kubernetes ignores it, using probes).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('HUB_PORT', '8080'), timeout=4)"]

ENTRYPOINT ["tini", "--"]
CMD ["codex-hub", "up"]

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
#   /data/work        where codex works (EXEC_WORKDIR)
# No VOLUME instruction on purpose: it would give every container (bridges included)
# anonymous volumes that outlive it; mount named volumes where they are wanted.
#
# The hub binds 127.0.0.1 by default, which inside a container only the container
# itself reaches. To publish it, set HUB_HOST=0.0.0.0 (compose.yaml does, for the hub
# service); the hub then refuses to start unless HUB_TOKEN and HUB_API_KEYS are set.

ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim

# Pinned like the Makefile's CODEX_VERSION: codex's JSONL events are a moving target.
ARG CODEX_VERSION=0.169.0

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

# codex, pinned, in /opt. CODEX_BIN points at the native binary rather than the npm
# wrapper: the wrapper's child survives a kill of the wrapper (see the Makefile). The
# platform package's path holds the target triple, so it is resolved here, at build
# time, and given a fixed name on PATH (`codex login` in a shell finds it too).
RUN npm install --prefix /opt/codex --omit=dev --no-audit --no-fund --loglevel=error \
      "@openai/codex@${CODEX_VERSION}" \
 && native="$(ls -d /opt/codex/node_modules/@openai/codex-linux-*/vendor/*/bin/codex | head -n 1)" \
 && test -x "$native" \
 && ln -s "$native" /usr/local/bin/codex \
 && npm cache clean --force \
 && rm -rf /root/.npm
ENV CODEX_BIN=/usr/local/bin/codex

# Python dependencies before the source, so editing code reuses this layer. They are
# read from pyproject.toml itself: no second list to keep in step. setuptools comes
# along so the source layer below builds without fetching anything (70.1+ needs no
# separate `wheel` for editable installs).
WORKDIR /app
COPY pyproject.toml ./
RUN python -m venv /opt/venv \
 && python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
      > /tmp/requirements.txt \
 && /opt/venv/bin/pip install -r /tmp/requirements.txt "setuptools>=70.1" \
 && rm /tmp/requirements.txt
ENV PATH=/opt/venv/bin:$PATH

# The source. Installed editable, like `make install`, so the tree stays as in the
# repository (the hub serves monitor/ from next to its package).
COPY README.md ./
COPY hub ./hub
COPY executor ./executor
COPY bridges ./bridges
COPY codex_hub ./codex_hub
COPY monitor ./monitor
RUN pip install --no-deps --no-build-isolation -e . \
 && codex-hub --help > /dev/null

USER codex
ENV HOME=/home/codex \
    HUB_DB=/data/hub/codex-hub.db \
    CODEX_HOME=/data/codex-home \
    EXEC_WORKDIR=/data/work

EXPOSE 8080

# Alive means /healthz answers; urlopen raises (exit 1) on a refused connection or an
# error status. Only the hub roles (serve, up) serve HTTP: compose.yaml switches this
# check off for executor and bridge containers (Kubernetes ignores it, using probes).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('HUB_PORT', '8080'), timeout=4)"]

ENTRYPOINT ["tini", "--"]
CMD ["codex-hub", "up"]

# syntax=docker/dockerfile:1
# cosigner: the fail-closed co-signer daemon for the 1BitPay merchant API.
#
#   docker build -t cosigner:0.1.0 .
#   docker compose -f deploy/compose.yaml up -d     (see deploy/README.md)
#
# Reproducible: the base image is pinned by digest and every runtime dependency is
# installed from requirements.lock with --require-hashes (`make lock` regenerates it).
# Bumping the base (docs/runbook.md, "Image upkeep"):
#   docker buildx imagetools inspect python:3.11-slim-bookworm   -> the index digest
#   replace the digest in BOTH FROM lines (a test keeps them equal), rebuild, test.
# The digest below was taken from published Dockerfiles using this tag; this project's
# machines reach no registry, so it was not pulled here: check it on first build.
#
# Runtime contract (DESIGN sections 6 and 7):
#   * runs as uid/gid 10001, never root; works with a read-only root filesystem
#     (writes only to /var/lib/cosigner and /tmp);
#   * /var/lib/cosigner holds the SQLite journal and the kill switch
#     (/var/lib/cosigner/PAUSE: `cosigner pause` / `cosigner resume`): mount a
#     volume there (0700, owned by 10001; a named Docker volume inherits this);
#   * the shard is mounted read-only at COSIGNER_PFX_PATH=/run/secrets/shard.pfx,
#     owned by 10001 with mode 0400 (a shard readable by group or others is refused);
#   * secrets come from mounted files, never from plain variables:
#       COSIGNER_API_SECRET_FILE=/run/secrets/api_secret
#       COSIGNER_PFX_PASSWORD_FILE=/run/secrets/pfx_password
#       COSIGNER_DATABASE_URL_FILE=/run/secrets/database_url   (PostgreSQL only)
#   * the policy is mounted read-only, e.g. COSIGNER_POLICY_PATH=/etc/cosigner/policy/policy.yaml;
#   * /metrics, /healthz and /readyz listen on COSIGNER_HTTP_ADDR=0.0.0.0:9464;
#   * TLS trusts the image's system store (Debian ca-certificates); for a private CA or
#     an inspecting proxy mount its PEM and set COSIGNER_CA_BUNDLE.
# -- build: the dependencies from the lock file, then cosigner's own wheel -------------
FROM python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b AS build
ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# A venv without pip: the base image's pip installs into it, so no installer ships.
COPY requirements.lock ./
RUN python -m venv --without-pip /opt/cosigner \
 && pip --python /opt/cosigner/bin/python install --no-deps --require-hashes \
        -r requirements.lock
# .dockerignore keeps the venv, tests, deploy files and every secret (.env, *.pfx) out.
COPY pyproject.toml README.md ./
COPY cosigner ./cosigner
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && pip --python /opt/cosigner/bin/python install --no-deps /wheels/cosigner-*.whl

# -- runtime: the venv alone, no compiler, no pip ------------------------------------
FROM python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/cosigner/bin:$PATH

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN groupadd --system --gid 10001 cosigner \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /var/lib/cosigner --shell /usr/sbin/nologin cosigner \
 && install -d -o 10001 -g 10001 -m 0700 /var/lib/cosigner \
 && install -d -o root -g root -m 0755 /etc/cosigner \
 && python -m pip uninstall --yes --quiet pip setuptools wheel \
 && rm -rf /root/.cache

COPY --from=build /opt/cosigner /opt/cosigner

# The journal needs no variable: COSIGNER_DATABASE_URL defaults to
# sqlite:///var/lib/cosigner/journal.db (setting it here would clash with *_FILE), and
# the kill switch to /var/lib/cosigner/PAUSE beside it.
ENV COSIGNER_HTTP_ADDR=0.0.0.0:9464 \
    COSIGNER_PFX_PATH=/run/secrets/shard.pfx

# Declared after the chown/chmod above so a new volume starts as 10001:10001 0700.
VOLUME ["/var/lib/cosigner"]
# No .env is read from here unless an operator mounts one deliberately.
WORKDIR /etc/cosigner
USER 10001:10001
EXPOSE 9464

# /healthz means "process alive"; readiness (/readyz) is for orchestrators, not restarts.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('COSIGNER_HTTP_ADDR', '0.0.0.0:9464').rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=3)"]

ENTRYPOINT ["cosigner"]
CMD ["run"]

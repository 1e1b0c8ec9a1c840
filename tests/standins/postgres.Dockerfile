# Test-only stand-in for postgres:17-bookworm (no image registry here): Debian bookworm's PostgreSQL 15 behind the
# same contract compose.yaml uses — POSTGRES_USER/PASSWORD/DB, /docker-entrypoint-initdb.d/*.sh and *.sql run once on
# an empty data folder, PGDATA=/var/lib/postgresql/data, pg_isready and psql on PATH, any other command run as is.
FROM python:3.11-slim-bookworm
RUN mkdir -p /etc/postgresql-common \
    && echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf \
    && apt-get update \
    && apt-get install -y --no-install-recommends postgresql-15 postgresql-client-15 \
    && rm -rf /var/lib/apt/lists/*
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
COPY postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
CMD ["postgres"]

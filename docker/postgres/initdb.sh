#!/usr/bin/env bash
# Run once by the postgres image, when its data volume is first created (/docker-entrypoint-initdb.d), as
# POSTGRES_USER on POSTGRES_DB (the results database). POSTGRES_USER owns the schema and runs the migrations
# (compose's `migrate`); every other role gets only what it needs:
#   WORKER_DB_USER   workers and the CLI: read and write rows of every table, now and after later migrations
#                    (ALTER DEFAULT PRIVILEGES), no DDL (no CREATE on the schema, owns nothing)
#   HOOKS_DB_USER    the hooks receiver: CONNECT only here; its tables are granted by grants.sql after `migrate`
#   GRAFANA_DB_USER  Grafana: SELECT on every table and view, now and later
# PUBLIC (every role) loses CONNECT and TEMP on the results database, Prefect's, and the maintenance database
# MAINTENANCE_DB (default postgres), so a role reaches only the databases granted to it.
# Values reach SQL as psql variables (:"name" and :'value' quote them), never spliced into the text.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v owner="$POSTGRES_USER" -v results_db="$POSTGRES_DB" -v prefect_db="$PREFECT_DB" \
    -v maintenance_db="${MAINTENANCE_DB:-postgres}" \
    -v reader="$GRAFANA_DB_USER" -v reader_password="$GRAFANA_DB_PASSWORD" \
    -v worker="$WORKER_DB_USER" -v worker_password="$WORKER_DB_PASSWORD" \
    -v hooks="$HOOKS_DB_USER" -v hooks_password="$HOOKS_DB_PASSWORD" <<'SQL'
CREATE DATABASE :"prefect_db" OWNER :"owner";
REVOKE CONNECT, TEMPORARY ON DATABASE :"results_db", :"prefect_db", :"maintenance_db" FROM PUBLIC;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;

CREATE ROLE :"reader" LOGIN PASSWORD :'reader_password';
CREATE ROLE :"worker" LOGIN PASSWORD :'worker_password';
CREATE ROLE :"hooks" LOGIN PASSWORD :'hooks_password';
GRANT CONNECT ON DATABASE :"results_db" TO :"reader", :"worker", :"hooks";
GRANT USAGE ON SCHEMA public TO :"reader", :"worker", :"hooks";

ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public GRANT SELECT ON TABLES TO :"reader";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO :"worker";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO :"worker";
SQL

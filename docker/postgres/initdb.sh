#!/usr/bin/env bash
# Run once by the postgres image, when its data volume is first created (/docker-entrypoint-initdb.d), as
# POSTGRES_USER on POSTGRES_DB (the results database): Prefect's database, and a read-only role for Grafana
# that may SELECT every table and view the migrations create later (they run as POSTGRES_USER).
# Values reach SQL as psql variables (:"name" and :'value' quote them), never spliced into the text.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v owner="$POSTGRES_USER" -v results_db="$POSTGRES_DB" -v prefect_db="$PREFECT_DB" \
    -v reader="$GRAFANA_DB_USER" -v reader_password="$GRAFANA_DB_PASSWORD" <<'SQL'
CREATE DATABASE :"prefect_db" OWNER :"owner";
CREATE ROLE :"reader" LOGIN PASSWORD :'reader_password';
GRANT CONNECT ON DATABASE :"results_db" TO :"reader";
GRANT USAGE ON SCHEMA public TO :"reader";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public GRANT SELECT ON TABLES TO :"reader";
SQL

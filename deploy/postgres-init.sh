#!/bin/sh
# PostgreSQL's first start (docker-entrypoint-initdb.d runs this only when the data volume
# is empty): the SLA ledger's own role and database, beside Temporal's `temporal` and
# `temporal_visibility` (made by the temporal-schema job). The ledger's role owns its
# database and nothing else; Temporal's credentials are not the ledger's.
# To change the ledger's password later: ALTER ROLE sla PASSWORD '...'; in psql.
set -eu
: "${SUPPORT_LEDGER_DB_PASSWORD:?set SUPPORT_LEDGER_DB_PASSWORD}"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
  --set ledger_password="$SUPPORT_LEDGER_DB_PASSWORD" <<'SQL'
CREATE ROLE sla LOGIN PASSWORD :'ledger_password';
CREATE DATABASE sla_ledger OWNER sla;
SQL

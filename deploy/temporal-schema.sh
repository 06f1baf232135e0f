#!/bin/sh
# One-shot (temporalio/admin-tools image): Temporal's databases and schemas on PostgreSQL,
# with temporal-sql-tool and the postgres12 plugin (PostgreSQL 12 and later).
# Safe to run on every `docker compose up`: `create` fails harmlessly when the database
# exists, `setup-schema -v 0.0` skips a database that is past 0.0, and `update-schema`
# applies only the versions not applied yet (so a newer admin-tools image upgrades it).
set -eu
: "${SQL_PASSWORD:?set SQL_PASSWORD (the PostgreSQL password)}"
host="${POSTGRES_SEEDS:-postgresql}"
port="${DB_PORT:-5432}"
user="${POSTGRES_USER:-temporal}"
schema_root=/etc/temporal/schema/postgresql/v12

sql() {
  # SQL_PASSWORD is read by temporal-sql-tool from the environment (not on the command line).
  temporal-sql-tool --plugin postgres12 --endpoint "$host" --port "$port" --user "$user" "$@"
}

for db in "${DBNAME:-temporal}:temporal" "${VISIBILITY_DBNAME:-temporal_visibility}:visibility"; do
  name="${db%%:*}"
  schema="${db##*:}"
  echo "temporal-schema: database $name ($schema schema)"
  sql --database "$name" create || echo "temporal-schema: $name exists already (or see the error above)"
  sql --database "$name" setup-schema -v 0.0
  sql --database "$name" update-schema -d "$schema_root/$schema/versioned"
done
echo "temporal-schema: done"

#!/bin/sh
# One-shot job of docker-compose.yml (service temporal-schema, image temporalio/admin-tools):
# create Temporal's two databases if they are missing and bring their schemas to the
# version of the admin-tools image, which matches the server image. It runs on every
# `docker compose up` and is safe to: `setup-schema -v 0.0` leaves a database that
# already has a version alone, and `update-schema` applies only what is newer.
# Connection settings come from the environment (SQL_PLUGIN, SQL_HOST, SQL_PORT,
# SQL_USER, SQL_PASSWORD), which temporal-sql-tool reads itself.
set -eu

: "${SQL_PLUGIN:?}" "${SQL_HOST:?}" "${SQL_USER:?}" "${SQL_PASSWORD:?}"
SCHEMA_DIR="${SCHEMA_DIR:-/etc/temporal/schema/postgresql/v12}"

create_database() {
  # `create` fails when the database exists (a volume kept from the last `up`): that one
  # failure is expected, any other is not.
  if output=$(temporal-sql-tool --db "$1" create 2>&1); then
    echo "created database $1"
  else
    case "$output" in
      *"already exists"*) echo "database $1 exists" ;;
      *) printf '%s\n' "$output" >&2; return 1 ;;
    esac
  fi
}

for database in temporal temporal_visibility; do
  case "$database" in
    temporal) versions="$SCHEMA_DIR/temporal/versioned" ;;
    *) versions="$SCHEMA_DIR/visibility/versioned" ;;
  esac
  create_database "$database"
  temporal-sql-tool --db "$database" setup-schema -v 0.0
  temporal-sql-tool --db "$database" update-schema -d "$versions"
done
echo "Temporal schemas are up to date"

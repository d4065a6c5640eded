#!/bin/sh
# migrator-postgres: PostgreSQL whose cluster lives on a volume container's mount.
#   PGDATA             cluster directory (default /data/pgdata); created with initdb when empty
#   POSTGRES_DB        database created on first start (default app)
#   POSTGRES_USER      role created on first start, owner of that database, may create more (default app)
#   POSTGRES_PASSWORD  that role's password (from the secrets file through env_secrets); required
#   POSTGRES_PORT      TCP port (default 5432)
# Local (socket) connections trust the container's postgres user; TCP needs the password (scram).
# The image's stop signal is SIGINT (a fast shutdown: SIGTERM would wait for every client to leave).
set -eu
export PGDATA=${PGDATA:-/data/pgdata}
db=${POSTGRES_DB:-app}
user=${POSTGRES_USER:-app}
port=${POSTGRES_PORT:-5432}
bin=$(ls -d /usr/lib/postgresql/*/bin | tail -n 1)
as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }
: "${POSTGRES_PASSWORD:?migrator-postgres: POSTGRES_PASSWORD is not set}"
mkdir -p "$PGDATA" /run/postgresql
chown postgres:postgres "$PGDATA" /run/postgresql
chmod 0700 "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    echo "migrator-postgres: initialising $PGDATA"
    as_postgres "$bin/initdb" -D "$PGDATA" --encoding=UTF8 --locale=C.UTF-8 --auth-local=trust \
        --auth-host=scram-sha-256 --data-checksums >/dev/null
    {
        echo "listen_addresses = '*'"
        echo "port = $port"
        echo "unix_socket_directories = '/run/postgresql'"
        echo "shared_buffers = 64MB"
    } >> "$PGDATA/postgresql.conf"
    echo "host all all 0.0.0.0/0 scram-sha-256" >> "$PGDATA/pg_hba.conf"
    as_postgres "$bin/pg_ctl" -D "$PGDATA" -o "-c listen_addresses=" -w start >/dev/null
    esc=$(printf '%s' "$POSTGRES_PASSWORD" | sed "s/'/''/g")
    # The password goes through stdin, never argv.
    as_postgres "$bin/psql" -v ON_ERROR_STOP=1 -q -d postgres <<SQL
CREATE ROLE "$user" LOGIN CREATEDB PASSWORD '$esc';
CREATE DATABASE "$db" OWNER "$user";
SQL
    as_postgres "$bin/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null
fi
echo "migrator-postgres: serving $PGDATA on :$port"
exec setpriv --reuid=postgres --regid=postgres --init-groups "$bin/postgres" -D "$PGDATA"

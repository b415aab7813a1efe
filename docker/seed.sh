#!/bin/sh
# The compose file's seed step: waits for the proxy's migrations to create `workers`, then
# registers the demo backends. Gives up after SEED_TIMEOUT seconds (default 60) with exit 1
# and a message that says what it waited for; exits 0 once seeded (seed.sql is idempotent).
# Environment: DATABASE_URL (required), SEED_TIMEOUT, SEED_SQL (default: seed.sql beside
# this script). tests/packaging.rs runs it against a local PostgreSQL.
set -eu
url=${DATABASE_URL:?DATABASE_URL must name the database to seed}
timeout=${SEED_TIMEOUT:-60}
sql=${SEED_SQL:-$(dirname "$0")/seed.sql}
# One attempt must not outlast the deadline: an unresolvable or silent host fails fast.
export PGCONNECT_TIMEOUT="${PGCONNECT_TIMEOUT:-3}"

deadline=$(($(date +%s) + timeout))
until error=$(psql "$url" -X -v ON_ERROR_STOP=1 -qtAc 'SELECT 1 FROM workers LIMIT 0' 2>&1 >/dev/null); do
    if [ "$(date +%s)" -ge "$deadline" ]; then
        echo "seed: gave up after ${timeout}s: the workers table never appeared." >&2
        echo "seed: the load_balancer service creates it at startup: is it running? (docker compose ps; docker compose logs load_balancer)" >&2
        echo "seed: last error: $(printf '%s\n' "$error" | head -n 1)" >&2
        exit 1
    fi
    sleep 1
done
psql "$url" -X -v ON_ERROR_STOP=1 -q -f "$sql"
echo "seed: demo backends registered in workers"

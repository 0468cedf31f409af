#!/usr/bin/env bash
# The PostgreSQL job of `make test`: the tests that touch what differs between databases
# (imports and their parameter limits, NUL bytes, the label queue's row locks, label
# rules, exports, runs and rounds, the job sweep) run again against a throwaway local
# PostgreSQL cluster. Skipped, with a note, where PostgreSQL cannot be installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python

if ! bash scripts/install_system_deps.sh postgresql; then
  echo "PostgreSQL job skipped: the postgresql package could not be installed here."
  exit 0
fi
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)

cluster=$(mktemp -d /tmp/prefloop-pg.XXXXXX)
# initdb and postgres refuse to run as root; run them as the package's postgres user.
as_owner=()
if [ "$(id -u)" -eq 0 ]; then
  chown postgres: "$cluster"
  as_owner=(runuser -u postgres --)
fi
port=$($PY -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
stop() {
  "${as_owner[@]}" "$bin/pg_ctl" -D "$cluster/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$cluster"
}
trap stop EXIT
"${as_owner[@]}" "$bin/initdb" -D "$cluster/data" -U prefloop -A trust -E UTF8 >"$cluster/initdb.log"
"${as_owner[@]}" "$bin/pg_ctl" -D "$cluster/data" -l "$cluster/server.log" -w \
  -o "-p $port -k $cluster -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null

echo "PostgreSQL job: $("$bin/postgres" --version) on port $port"
DATABASE_URL="postgres://prefloop@127.0.0.1:$port/postgres" $PY -m pytest -p no:cacheprovider -n 2 \
  -m "(not slow or database_scale) and not browser and not worker" \
  tests/test_prompt_import.py tests/test_preference_datasets.py tests/test_label_rules.py tests/test_label_queue.py \
  tests/test_queue_concurrency.py tests/test_preference_export.py tests/test_runs.py \
  tests/test_loop_rounds.py tests/test_job_recovery.py tests/test_access.py tests/test_job_cancel.py

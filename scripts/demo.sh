#!/usr/bin/env bash
# `make demo`: prepare everything, start redis-server, the Celery workers and the web
# server, and stop them all on Ctrl-C. Safe to run again: it reuses what exists.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
CELERY=.venv/bin/celery
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# Two torch workers share the cores; give each one thread unless told otherwise.
export PREFLOOP_TORCH_THREADS="${PREFLOOP_TORCH_THREADS:-1}"
REDIS_PORT="${PREFLOOP_REDIS_PORT:-6379}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:${REDIS_PORT}/0}"
mkdir -p var/log var/redis

$PY manage.py migrate --noinput -v 0
$PY manage.py collectstatic --noinput -v 0
$PY manage.py prepare_base_model
$PY manage.py load_starter_prompts
$PY manage.py create_demo_users

pids=()
redis_pid=""
stop_all() {
  trap - TERM EXIT
  # A second Ctrl-C stops the workers at once (Celery's cold shutdown); the job they held
  # is not acknowledged, so it runs again after the next start.
  trap 'echo "Stopping the workers now; the jobs they held run again on the next start."
        kill -QUIT "${pids[@]}" 2>/dev/null' INT
  echo; echo "Stopping PrefLoop (web, workers, then redis): a worker first finishes the job in hand"
  echo "(a reward model or a policy update can take many minutes); press Ctrl-C again to stop it now."
  # Workers finish the job in hand (warm shutdown) and acknowledge it, which needs redis:
  # so redis goes last.
  kill -TERM "${pids[@]}" 2>/dev/null || true
  for pid in "${pids[@]}"; do  # polled, not `wait`: the second Ctrl-C must be able to act
    while kill -0 "$pid" 2>/dev/null; do sleep 0.5; done
  done
  [ -n "$redis_pid" ] && kill -TERM "$redis_pid" 2>/dev/null && wait "$redis_pid" 2>/dev/null
  true
}
trap stop_all INT TERM EXIT

if redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then
  echo "Using the redis-server already running on port $REDIS_PORT."
else
  # An append-only file, so a redis that is killed or restarted keeps the queued jobs.
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$PWD/var/redis" --appendonly yes \
    --appendfsync everysec >var/log/redis.log 2>&1 &
  redis_pid=$!
  for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
fi

# One process per queue: gpu (generation, policy updates, evaluation), train (full
# reward-model retrains) and refit (reward-model head refits, seconds each, so a new
# label is not stuck behind a retrain) hold models in memory and run one job at a time;
# default takes the light work.
# The gpu worker's output (with its tqdm bars) comes to this console; the others log
# under var/log.
$CELERY -A prefloop worker -Q gpu -c 1 -n gpu@%h --loglevel INFO &
pids+=($!)
$CELERY -A prefloop worker -Q train -c 1 -n train@%h --loglevel INFO >var/log/worker-train.log 2>&1 &
pids+=($!)
$CELERY -A prefloop worker -Q refit -c 1 -n refit@%h --loglevel INFO >var/log/worker-refit.log 2>&1 &
pids+=($!)
$CELERY -A prefloop worker -Q default -c 2 -n default@%h --loglevel INFO >var/log/worker-default.log 2>&1 &
pids+=($!)
# One beat per deployment: it sends the job sweep (training/services/job_recovery.py)
# to the default queue every PREFLOOP_SWEEP_SECONDS.
$CELERY -A prefloop beat -s var/celerybeat-schedule --loglevel INFO >var/log/beat.log 2>&1 &
pids+=($!)

$PY manage.py queue_initial_comparisons --prompts 16

.venv/bin/gunicorn prefloop.wsgi --bind 127.0.0.1:8000 --workers 2 --threads 4 --no-control-socket \
  --access-logfile var/log/web-access.log --error-logfile var/log/web.log &
pids+=($!)

cat <<BANNER

  PrefLoop is running at http://127.0.0.1:8000/
    researcher: researcher / researcher-demo   (runs and rounds at /researcher/, progress at /progress/)
    annotator:  annotator / annotator-demo     (labeling at /label/, own numbers at /me/)
  The first comparisons are being generated on the gpu worker (progress below and on
  the researcher page). Logs: var/log/. Press Ctrl-C to stop everything.

BANNER
# Stop everything as soon as any one part dies, rather than limp on half-started.
wait -n

#!/usr/bin/env bash
# `make loadtest`: replay a trace with Locust, headless, against a stack that is already running
# (`make run` in another terminal, or `docker compose up`), bounded in time. Writes
# $LOADTEST_OUT/{locust_stats.csv, locust_stats_history.csv, locust_failures.csv, report.html,
# summary.json} and exits non-zero when a job failed, expired or was lost (or none was submitted).
#
#   LOADTEST_TRACE     arrival_ms,prompt_id file (default: loadtest/traces/maf-peak-60s.csv, 60 s, 90 jobs)
#   LOADTEST_OUT       report folder (default: out/loadtest)
#   LOADTEST_RUN_TIME  hard bound of the whole run (default: 300s; the test ends by itself once
#                      the trace is replayed and every job has finished or timed out)
# Further arguments go to locust, e.g. `bash scripts/loadtest.sh --namespace exp1 --slo 30`.
# The broker, store and namespace come from HADIS_AMQP_URL, HADIS_REDIS_URL, HADIS_NAMESPACE.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${LOADTEST_OUT:-out/loadtest}
mkdir -p "$OUT"
exec "$PYTHON" -m locust -f loadtest/locustfile.py --headless --only-summary \
  --trace "${LOADTEST_TRACE:-loadtest/traces/maf-peak-60s.csv}" \
  --run-time "${LOADTEST_RUN_TIME:-300s}" \
  --csv "$OUT/locust" --html "$OUT/report.html" --summary "$OUT/summary.json" "$@"

#!/usr/bin/env bash
# The seed's CLI demo (section 2.1) against a real queuectld, in a fresh state directory.
# The first queuectl command starts the per-user daemon; the last one stops it.
set -euo pipefail
export QUEUECTL_HOME="${QUEUECTL_HOME:-$(mktemp -d /tmp/queuectl-demo.XXXXXX)}"
step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }
trap 'queuectl shutdown >/dev/null 2>&1 || true' EXIT

echo "state directory: $QUEUECTL_HOME"
step queuectl status
# Fewer retries than the default 3 so the failing job reaches the DLQ within seconds.
step queuectl config set max-retries 2
step queuectl enqueue '{"id":"job1","command":"echo Job 1 executed"}'
step queuectl enqueue '{"id":"job2","command":"sleep 2"}'
step queuectl enqueue '{"id":"job3","command":"not_a_real_command"}'
step queuectl enqueue '{"id":"job4","command":"echo Final Job done"}'
# As in the seed, workers run in the foreground: until the queue is drained (or Ctrl+C).
step queuectl worker start --count 2 --attach
step queuectl status
step queuectl dlq list
step queuectl dlq retry job3
step queuectl list --state pending
step queuectl worker start --count 1 --attach
step cat "$QUEUECTL_HOME/logs/job_job1.txt"
step queuectl logs job3
step queuectl metrics

#!/usr/bin/env bash
# Stop the processes tests/slurm/start.sh started, by the PIDs it recorded (never by name).
# A daemon that was already running before start.sh (e.g. a system munged) is not touched.
set -euo pipefail

STATE_DIR=${MATDISC_SLURM_STATE:-/tmp/matdisc-slurm}
PIDS=$STATE_DIR/pids
[ -f "$PIDS" ] || { echo "stop.sh: nothing to stop ($PIDS missing)"; exit 0; }

# slurmd first (it ends its job steps), then the controller, then munged.
for daemon in slurmd slurmctld munged; do
    pid=$(awk -v n="$daemon" '$1 == n {print $2}' "$PIDS" | tail -n 1)
    [ -n "$pid" ] || continue
    # Only while that PID is still the daemon we started (PIDs get reused).
    if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$daemon" ]; then
        kill "$pid"
        for ((i = 0; i < 100; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid"; fi
        echo "stop.sh: stopped $daemon ($pid)"
    fi
done
rm -f "$PIDS"

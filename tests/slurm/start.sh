#!/usr/bin/env bash
# Start a one-node Slurm cluster on 127.0.0.1 for the integration tests (tests/test_slurm.py).
#
# Run as root on a Debian machine. Idempotent: installs `slurmctld slurmd slurm-client munge`
# only when missing, reuses a cluster this script already started, and never touches a
# slurm.conf it did not write. No systemd: munged, slurmctld and slurmd are started directly
# and their PIDs recorded in $STATE_DIR/pids, which tests/slurm/stop.sh reads to stop exactly
# them. Waits until `sinfo` shows the node idle and a job of the workflow's size (all CPUs,
# 4 GB, a GPU on the GPU partition) runs on each partition; restarts the daemons once if not.
#
# The cluster: partitions "$CPU_PARTITION" (default) and "$GPU_PARTITION" on one node with
# this machine's CPUs and memory and one fake GPU (gres.conf: File=/dev/null) so GPU routing
# (--gpus=1 / --gres=gpu:1) is scheduled for real. No accounting (accounting_storage/none), so
# Snakemake must poll with `slurm-status-command: squeue`; MinJobAge=300 keeps finished jobs
# visible to squeue for five minutes.
#
# Environment: CPU_PARTITION (default debug), GPU_PARTITION (default debug-gpu),
# MATDISC_SLURM_STATE (default /tmp/matdisc-slurm), MATDISC_SLURM_TIMEOUT (seconds, default 60).
set -euo pipefail

CPU_PARTITION=${CPU_PARTITION:-debug}
GPU_PARTITION=${GPU_PARTITION:-debug-gpu}
STATE_DIR=${MATDISC_SLURM_STATE:-/tmp/matdisc-slurm}
TIMEOUT=${MATDISC_SLURM_TIMEOUT:-60}
CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
MARKER="# written by matdisc tests/slurm/start.sh"
NODE=localnode

die() { echo "start.sh: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (it installs packages and starts daemons)"

# 1. Packages (about 13 MB); skipped when present.
missing=()
for pkg in slurmctld slurmd slurm-client munge; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "start.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

mkdir -p "$STATE_DIR"
PIDS=$STATE_DIR/pids
touch "$PIDS"

# A recorded PID counts only while it is still that daemon (PIDs get reused).
alive() { [ -n "${1:-}" ] && [ "$(cat "/proc/$1/comm" 2>/dev/null)" = "$2" ]; }
recorded_pid() { awk -v n="$1" '$1 == n {print $2}' "$PIDS" | tail -n 1; }
record_pid() {
    grep -v "^$1 " "$PIDS" >"$PIDS.tmp" || true
    echo "$1 $2" >>"$PIDS.tmp"
    mv "$PIDS.tmp" "$PIDS"
}
wait_for_file() {
    local f=$1 i
    for ((i = 0; i < TIMEOUT * 10; i++)); do
        [ -s "$f" ] && return 0
        sleep 0.1
    done
    return 1
}

# Already running (started by an earlier call of this script)? Then there is nothing to do.
if alive "$(recorded_pid slurmctld)" slurmctld && alive "$(recorded_pid slurmd)" slurmd \
    && sinfo -h -n "$NODE" -o %t 2>/dev/null | grep -Eq '^(idle|mix|alloc)'; then
    echo "start.sh: cluster already running ($(sinfo -h -o '%P %t' | tr '\n' ' '))"
    exit 0
fi

# 2. munge: the key comes with the package (its postinst creates one); make one if missing.
if [ ! -s /etc/munge/munge.key ]; then
    runuser -u munge -- mungekey --create
fi
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
chmod 0755 /run/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    rm -f /run/munge/munged.pid
    runuser -u munge -- /usr/sbin/munged
    wait_for_file /run/munge/munged.pid || die "munged did not start (see /var/log/munge/munged.log)"
    record_pid munged "$(cat /run/munge/munged.pid)"
fi

# 3. slurm.conf for one node on 127.0.0.1 with this machine's CPUs and memory.
if [ -e "$CONF" ] && ! grep -qF "$MARKER" "$CONF"; then
    die "$CONF exists and was not written by this script; refusing to overwrite it"
fi
# All of the machine's CPUs (not only those this process may use), and at least the 2 threads
# the workflow's rules declare, so every job fits the node (task/none does not pin CPUs).
CPUS=$(nproc --all)
[ "$CPUS" -ge 2 ] || CPUS=2
MEM_MB=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.95)}' /proc/meminfo)
mkdir -p "$CONF_DIR"
cat >"$CONF" <<EOF
$MARKER; stop with tests/slurm/stop.sh
ClusterName=matdisc
SlurmctldHost=$(uname -n | cut -d. -f1)(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# squeue-based job status (no accounting) needs finished jobs to stay visible for a while.
MinJobAge=300
ReturnToService=2
SlurmdParameters=config_overrides
StateSaveLocation=$STATE_DIR/ctld
SlurmdSpoolDir=$STATE_DIR/spool
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd.pid
SlurmctldLogFile=$STATE_DIR/slurmctld.log
SlurmdLogFile=$STATE_DIR/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
GresTypes=gpu
NodeName=$NODE NodeAddr=127.0.0.1 NodeHostname=$NODE CPUs=$CPUS RealMemory=$MEM_MB Gres=gpu:1 State=UNKNOWN
PartitionName=$CPU_PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
PartitionName=$GPU_PARTITION Nodes=$NODE MaxTime=INFINITE State=UP
EOF
cat >"$CONF_DIR/gres.conf" <<EOF
$MARKER
# A fake GPU, so that --gpus/--gres requests are scheduled; nothing runs on it.
NodeName=$NODE Name=gpu File=/dev/null
EOF

# 4. The daemons, without systemd, from a fresh controller state and slurmd spool: nothing
#    saved by an earlier cluster (another configuration, a job counter, cached node
#    registrations) carries over. A stale daemon of ours (e.g. after a crash) is stopped first.
start_daemons() {
    local daemon pid
    for daemon in slurmd slurmctld; do
        pid=$(recorded_pid $daemon)
        if alive "$pid" $daemon; then kill "$pid"; sleep 1; fi
    done
    rm -f "$STATE_DIR/slurmctld.pid" "$STATE_DIR/slurmd.pid"
    rm -rf "$STATE_DIR/ctld" "$STATE_DIR/spool"
    mkdir -p "$STATE_DIR/ctld" "$STATE_DIR/spool"
    /usr/sbin/slurmctld -c -f "$CONF"
    wait_for_file "$STATE_DIR/slurmctld.pid" || die "slurmctld did not start: $(tail -n 5 "$STATE_DIR/slurmctld.log")"
    record_pid slurmctld "$(cat "$STATE_DIR/slurmctld.pid")"
    /usr/sbin/slurmd -f "$CONF" -N "$NODE"
    wait_for_file "$STATE_DIR/slurmd.pid" || die "slurmd did not start: $(tail -n 5 "$STATE_DIR/slurmd.log")"
    record_pid slurmd "$(cat "$STATE_DIR/slurmd.pid")"
}

# 5. Wait until the node is idle.
wait_idle() {
    local i state=
    for ((i = 0; i < TIMEOUT * 2; i++)); do
        state=$(sinfo -h -n "$NODE" -o %t 2>/dev/null | head -n 1 || true)
        [ "$state" = idle ] && return 0
        sleep 0.5
    done
    die "node $NODE not idle after ${TIMEOUT}s (state: ${state:-none}); logs in $STATE_DIR"
}

# 6. A job of the size the workflow's jobs ask for (all CPUs, 4 GB, the GPU partition's GPU)
#    must start on each partition: a cluster that only queues jobs would make Snakemake wait.
test_jobs_run() {
    local partition extra
    for partition in "$CPU_PARTITION" "$GPU_PARTITION"; do
        extra=()
        [ "$partition" = "$GPU_PARTITION" ] && extra=(--gpus=1)
        if ! timeout "$TIMEOUT" srun -Q -p "$partition" -N 1 -c "$CPUS" --mem=4000 -t 1 "${extra[@]}" true; then
            echo "start.sh: a test job did not run on partition $partition within ${TIMEOUT}s" >&2
            MATDISC_SLURM_STATE=$STATE_DIR bash "$(dirname "$0")/diagnose.sh" >&2
            return 1
        fi
    done
}

# A cluster whose test jobs stay queued is restarted once before giving up.
start_daemons
wait_idle
if ! test_jobs_run; then
    echo "start.sh: restarting the cluster once" >&2
    start_daemons
    wait_idle
    test_jobs_run || die "test jobs do not run on the cluster (diagnostics above)"
fi
echo "start.sh: cluster up: $(sinfo -h -o '%P %t %C' | tr '\n' ' ')"

#!/usr/bin/env bash
# What the test Slurm cluster (tests/slurm/start.sh) says about itself: partitions, jobs and
# why they wait, the node, and the ends of the daemons' logs. Printed by start.sh when its
# test jobs do not run and by tests/test_slurm.py when a Snakemake run hangs. Never fails.
STATE_DIR=${MATDISC_SLURM_STATE:-/tmp/matdisc-slurm}
show() { echo "\$ $*"; "$@" 2>&1; }
show sinfo
show squeue --states=all -o '%i %P %j %k %T %r %M'
show scontrol show job
show scontrol show node
show tail -n 40 "$STATE_DIR/slurmctld.log"
show tail -n 20 "$STATE_DIR/slurmd.log"
exit 0

#!/usr/bin/env bash
# A one-node Slurm on localhost, to check the pipeline under profiles/slurm against a real Slurm.
#
#   scripts/slurm_local.sh check [REFERENCE]   start Slurm, run a slice of the smoke config (SLICE below)
#                                              through the Slurm profile, check every run was a Slurm job and
#                                              every table cell equals a local smoke run's (REFERENCE: its
#                                              results dir, of the slice or the whole smoke config; made here
#                                              if omitted), then stop what it started (exit 0 = all held)
#   scripts/slurm_local.sh start | stop        only start (or stop) the daemons
#
# Needs root and Debian's slurm-wlm and munge packages (installed here with apt-get if missing). Slurm
# runs without accounting storage, so the executor reads job states with squeue (MinJobAge keeps finished
# jobs there for 10 minutes). Every wait is bounded; a daemon that does not come up is named with the
# tail of its log. Files: /etc/slurm/slurm.conf (a stn-managed one, removed again by stop; an existing
# foreign one is left alone and the script stops), /var/spool/slurm-stn, /var/log/slurm-stn. Environment: WORK (scratch
# directory, default a new temporary one), SLURM_CHECK_TIMEOUT (seconds for the Slurm run, default 2400),
# SLURM_CHECK_ALL=1 (the whole smoke config instead of the slice).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
CONF=/etc/slurm/slurm.conf
MARK="# managed by stn scripts/slurm_local.sh"
STATE=/var/spool/slurm-stn
LOGS=/var/log/slurm-stn
NODE="$(hostname -s)"

die() { echo "slurm_local: $*" >&2; exit 1; }
log() { echo "[slurm_local $(date +%H:%M:%S)] $*"; }

wait_for() {  # wait_for SECONDS WHAT COMMAND...: poll until COMMAND succeeds
  local limit=$1 what=$2; shift 2
  local end=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < end)) || return 1
    sleep 1
  done
  log "$what is up"
}

install() {
  [[ $EUID -eq 0 ]] || die "needs root (it installs packages and starts daemons)"
  if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    log "installing slurm-wlm and munge (apt-get)"
    timeout 600 apt-get update -qq || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq slurm-wlm munge >/dev/null \
      || die "apt-get install slurm-wlm munge failed"
  fi
}

write_conf() {
  if [[ -f $CONF ]] && ! grep -q "^$MARK" "$CONF"; then
    die "$CONF exists and was not written by this script; refusing to replace a real cluster's config"
  fi
  local cpus mem
  # One job slot per core. Two per core were tried (session 25: CPUs=4, SlurmdParameters=config_overrides):
  # the smoke jobs are CPU-bound (each spends ~15 s importing torch and MLflow), each took 2.4x as long,
  # and the Slurm run, with 9 fewer Slurm jobs, 646 s against 625 s at one slot per core.
  cpus=$(nproc)
  mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 2048 ))
  mkdir -p /etc/slurm "$STATE/ctld" "$STATE/d" "$LOGS"
  cat > "$CONF" <<EOF
$MARK
ClusterName=stnlocal
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MinJobAge=600
MpiDefault=none
ReturnToService=2
NodeName=$NODE CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=local Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

start() {
  install
  write_conf
  if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    [[ -s /etc/munge/munge.key ]] || { dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none; }
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge && chown munge:munge /run/munge
    runuser -u munge -- /usr/sbin/munged || die "munged did not start (see /var/log/munge/munged.log)"
    touch "$STATE/started-munged"  # so that stop ends it too
    wait_for 20 munged bash -c "munge -n | unmunge" || die "munged does not answer (see /var/log/munge/munged.log)"
  fi
  pgrep -x slurmctld >/dev/null || slurmctld || die "slurmctld did not start: $(tail -3 $LOGS/slurmctld.log 2>/dev/null)"
  wait_for 30 slurmctld timeout 5 scontrol ping \
    || die "slurmctld does not answer scontrol ping: $(tail -3 $LOGS/slurmctld.log 2>/dev/null)"
  pgrep -x slurmd >/dev/null || slurmd || die "slurmd did not start: $(tail -3 $LOGS/slurmd.log 2>/dev/null)"
  wait_for 60 "node $NODE" bash -c "timeout 5 sinfo -h -n $NODE -o %t | grep -qE '^(idle|mix|alloc)'" \
    || die "node $NODE is not idle: $(timeout 5 sinfo -h -n "$NODE" -o '%t %E' 2>&1); slurmd log: $(tail -3 $LOGS/slurmd.log 2>/dev/null)"
  # a Slurm killed mid-run (kill -9, a CI stopped) keeps its queue in $STATE/ctld and runs it again on restart:
  # those jobs of a dead run would hold the one node, so the test job below would wait and be revoked
  timeout 10 scancel --user root >/dev/null 2>&1 || true
  timeout 60 srun -N1 -n1 true || die "a test job (srun true) did not run: $(tail -3 $LOGS/slurmctld.log 2>/dev/null)"
}

stop() {
  timeout 10 scancel --user root >/dev/null 2>&1 || true
  for d in slurmd slurmctld; do
    pkill -x "$d" 2>/dev/null || true
  done
  local end=$((SECONDS + 20))
  while pgrep -x slurmd >/dev/null || pgrep -x slurmctld >/dev/null; do
    ((SECONDS < end)) || { pkill -9 -x slurmd || true; pkill -9 -x slurmctld || true; break; }
    sleep 1
  done
  # A slurm.conf whose controller is down makes every `scontrol` wait ~9 s before it fails, and the Slurm
  # executor plugin runs `scontrol show config` when Snakemake imports it: every later `snakemake` on this
  # machine, Slurm or not, would start 9 s slower. Ours goes with the daemons (start writes it again).
  if [[ -f $CONF ]] && grep -q "^$MARK" "$CONF"; then
    rm -f "$CONF"
  fi
  if [[ -f $STATE/started-munged ]]; then
    pkill -x munged 2>/dev/null || true
    rm -f "$STATE/started-munged"
    log "slurmctld, slurmd and munged stopped"
  else
    log "slurmctld and slurmd stopped (munged was running before: left alone)"
  fi
}

# The slice of the smoke config that the check runs: every rule that goes to Slurm still runs at least once
# (each kind of training run, each data set builder, each table), with fewer models and data sets: 28 Slurm
# jobs against the whole config's 46 (each ~20 s on 2 cores, most of it importing torch and MLflow cold).
# Its runs are runs of the smoke config with the same settings, so each of its table cells must equal the
# same cell of a whole smoke run (compare_results.py --subset).
SLICE=(
  'table1={datasets: [R, TC], models: [CNN, ST-FCN-Aff], figure_datasets: [TC], figure_model: ST-FCN-Aff}'
  'table2={models: [ST-CNN-Multi], train_overrides: []}'
  'table3={models: [2xST-CNN], skip: [], train_overrides: []}'
  'table4={models: [2xST-FCN-Aff], train_overrides: []}'
)
[[ ${SLURM_CHECK_ALL:-0} == 1 ]] && SLICE=()

smoke() {  # smoke RESULTS [snakemake options...]: the check's slice of the smoke config into RESULTS, bounded in time
  local results=$1; shift
  (cd "$ROOT" && timeout --kill-after=30 "${SLURM_CHECK_TIMEOUT:-2400}" env -u MLFLOW_TRACKING_URI \
    "$PY" -m snakemake --configfile config/smoke.yaml --config "results=$results" "${SLICE[@]}" "$@")
}

check() {
  local work="${WORK:-$(mktemp -d /tmp/stn-slurm.XXXXXX)}" reference="${1:-}"
  start
  trap stop EXIT
  if [[ -z $reference ]]; then
    reference="$work/local"
    log "local smoke run into $reference"
    smoke "$reference" --cores 2 > "$work/local.log" 2>&1 || die "the local smoke run failed; see $work/local.log"
  fi
  log "smoke run through profiles/slurm into $work/slurm (log: $work/slurm.log)"
  # squeue as the status command (no accounting here); no account (none exists); the controller's
  # first status check after 10 s instead of 40. timeout: the outer Snakemake must never hang.
  # Status checks every 2 s, not Snakemake's 10 (a real cluster's scheduler deserves the profile's gentler
  # polling): the smoke run's 94 Slurm jobs, most of them seconds long, waited on the 10-s ticks (the check's
  # Slurm run 10.0 -> 9.3 min; the rest is each job's two Snakemake start-ups and the stn imports).
  if ! smoke "$work/slurm" --workflow-profile profiles/slurm \
      --seconds-between-status-checks 2 --max-status-checks-per-second 1 \
      --slurm-status-command squeue --slurm-no-account --slurm-init-seconds-before-status-checks 2 \
      --slurm-logdir "$work/slurm-logs" --slurm-keep-successful-logs > "$work/slurm.log" 2>&1; then
    tail -20 "$work/slurm.log" >&2
    die "the smoke run under Slurm failed or timed out; see $work/slurm.log and $work/slurm-logs"
  fi
  "$PY" "$ROOT/scripts/compare_results.py" --slurm --subset "$work/slurm" "$reference" \
    || die "the Slurm run differs from the local one"
  log "ok: every run was a Slurm job and every table cell equals the local run's ($work)"
}

case "${1:-check}" in
  start) start ;;
  stop) stop ;;
  check) shift || true; check "${1:-}" ;;
  *) die "unknown command ${1}; use check [REFERENCE], start or stop" ;;
esac

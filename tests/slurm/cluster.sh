#!/usr/bin/env bash
# Bring up / tear down a REAL single-node SLURM cluster on localhost for CI.
#
#   bash tests/slurm/cluster.sh install      # apt-get the packages (root)
#   bash tests/slurm/cluster.sh start DIR    # start munged, mariadbd, slurmdbd,
#                                            # slurmctld, slurmd; all state in DIR
#   bash tests/slurm/cluster.sh stop DIR     # stop exactly those daemons
#
# `start` prints `export VAR=...` lines on stdout (progress goes to stderr) and
# writes the same lines to DIR/env.sh; source it before sbatch/sacct/snakemake:
#   SLURM_CONF          DIR/slurm.conf (clients AND daemons read it; see
#                       link_etc_conf for the one symlink in /etc/slurm that
#                       snakemake's nested srun needs)
#   SLURM_CI_ACCOUNT    account created with sacctmgr (root is a member)
#   SLURM_CI_PARTITION  the default partition ("main")
#
# Tested on Debian 12 (slurm 22.05, munge 0.5.15, MariaDB 10.11) with
# snakemake 9.27 + snakemake-executor-plugin-slurm 2.8.0.  Must run as root
# (SlurmUser=root; jobs run as root).  Ports are picked free from
# $SLURM_CI_PORT_BASE (default 26817) upwards, so a system slurm/mysql on the
# standard ports does not clash.
#
# Snakemake against this cluster (verified; run from the workflow dir after
# `. DIR/env.sh` with the venv active so jobs find the same snakemake):
#   timeout -k 10 300 snakemake --executor slurm --jobs 2 \
#     --default-resources slurm_partition=main mem_mb=500 runtime=5 \
#                         slurm_account="$SLURM_CI_ACCOUNT" \
#     --slurm-init-seconds-before-status-checks 1
# Notes:
#  * No extra --slurm-* flag is required.  --slurm-init-seconds-before-status-checks
#    (default 40) only makes a 2-job run take ~13 s instead of ~80 s.
#  * slurm_account is optional; if given it must be listed by
#    `sacctmgr -n -s list user root` (the plugin validates it) -- "ci" and
#    "root" are.  Without it the plugin's guess fails harmlessly and jobs run
#    under root's default account "root".
#  * Status polling: the default `sacct` works (slurmdbd is up);
#    --slurm-status-command squeue works too (MinJobAge=300).
#  * Jobs inherit the submitting environment (sbatch --export=ALL).  But the
#    jobstep plugin strips SLURM_CONF before its nested `srun`; hence the
#    /etc/slurm/slurm.conf symlink described at link_etc_conf below.
#  * `sbatch --gres=gpu:1` is rejected at submit time (exit 1, "Invalid generic
#    resource (gres) specification"): no GresTypes/GPUs are configured.
#  * If `start` fails it stops what it had started, then exits non-zero.
set -euo pipefail

readonly SLURM_CI_CLUSTER="${SLURM_CI_CLUSTER:-ci}"
readonly SLURM_CI_ACCOUNT="${SLURM_CI_ACCOUNT:-ci}"
readonly SLURM_CI_PARTITION="main"
readonly START_TIMEOUT="${SLURM_CI_START_TIMEOUT:-60}"

log() { printf '[slurm-ci] %s\n' "$*" >&2; }
die() { printf '[slurm-ci] ERROR: %s\n' "$*" >&2; exit 1; }

need_root() { [[ "$(id -u)" == 0 ]] || die "must run as root"; }

# --------------------------------------------------------------------------
# install
# --------------------------------------------------------------------------
readonly NEEDED_BINS=(munged slurmctld slurmd slurmdbd sbatch sacct sacctmgr sinfo squeue
    mariadbd mariadb-install-db mariadb)
readonly PACKAGES=(munge slurm-client slurmctld slurmd slurmdbd mariadb-server mariadb-client)

all_bins_present() {
    local b
    for b in "${NEEDED_BINS[@]}"; do
        command -v "$b" >/dev/null 2>&1 || [[ -x "/usr/sbin/$b" ]] || return 1
    done
}

cmd_install() {
    need_root
    if all_bins_present; then
        log "slurm/munge/mariadb binaries already present; skipping apt-get"
        return 0
    fi
    # Keep invoke-rc.d from starting the system daemons during install
    # (exit 101 = "action forbidden").  Only remove the file if we made it.
    local policy=/usr/sbin/policy-rc.d created_policy=0
    if [[ ! -e "$policy" ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        created_policy=1
    fi
    if [[ $created_policy == 1 ]]; then
        # shellcheck disable=SC2064
        trap "rm -f '$policy'" EXIT
    fi
    export DEBIAN_FRONTEND=noninteractive
    timeout 600 apt-get update -qq
    timeout 1200 apt-get install -y -qq --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "${PACKAGES[@]}" >&2
    all_bins_present || die "packages installed but some binaries are missing: ${NEEDED_BINS[*]}"
    log "install done"
}

# --------------------------------------------------------------------------
# helpers for start/stop
# --------------------------------------------------------------------------
port_in_use() {  # exit 0 if something listens on 127.0.0.1:$1
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

TAKEN_PORTS=" "
PICKED=""
pick_port() {  # set PICKED to a free port >= $1 not picked before (no subshell!)
    local p="$1"
    while port_in_use "$p" || [[ "$TAKEN_PORTS" == *" $p "* ]]; do
        p=$((p + 1))
        ((p < 65000)) || die "no free port found"
    done
    TAKEN_PORTS+="$p "
    PICKED="$p"
}

# Wait (bounded) until "$@" succeeds; on timeout show the given log's tail.
wait_for() {
    local what="$1" secs="$2" logf="$3"
    shift 3
    local end=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= end)); then
            log "timed out after ${secs}s waiting for: $what"
            [[ -f "$logf" ]] && { log "---- tail $logf ----"; tail -n 40 "$logf" >&2; }
            die "$what did not come up"
        fi
        sleep 0.5
    done
}

# exit 0 if pid $1 exists, is not a zombie and its comm is $2 (guards
# against pid reuse).
proc_alive() {
    local stat
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
    [[ "$(cat "/proc/$1/comm" 2>/dev/null)" == "$2" ]] || return 1
    # field 3 of /proc/PID/stat (after "(comm)") is the state; Z = zombie
    [[ "${stat##*) }" != Z* ]]
}

# The pid in pidfile $1 if that process is alive and its comm is $2.
live_pid() {
    local pidf="$1" comm="$2" pid
    [[ -s "$pidf" ]] || return 1
    pid="$(tr -dc '0-9' <"$pidf")"
    [[ -n "$pid" ]] && proc_alive "$pid" "$comm" || return 1
    echo "$pid"
}

stop_pidfile() {  # stop_pidfile PIDFILE COMM [SECONDS]
    local pidf="$1" comm="$2" secs="${3:-30}" pid end
    pid="$(live_pid "$pidf" "$comm")" || { rm -f "$pidf"; return 0; }
    log "stopping $comm (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    end=$((SECONDS + secs))
    while proc_alive "$pid" "$comm"; do
        if ((SECONDS >= end)); then
            log "$comm (pid $pid) ignored SIGTERM for ${secs}s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 1
            break
        fi
        sleep 0.2
    done
    rm -f "$pidf"
}

# snakemake-executor-plugin-slurm-jobstep (>=0.6) strips every SLURM_* variable
# except the job ids, SLURM_CONF included, before its nested
# `srun ... snakemake`; that srun then falls back to /etc/slurm/slurm.conf (and
# to a DNS SRV lookup, which fails).  So besides SLURM_CONF we point
# /etc/slurm/slurm.conf at DIR/slurm.conf with a symlink -- the only write
# outside DIR.  A regular file there is never touched; a symlink is replaced
# (so only one cluster at a time gets nested srun right) and removed by `stop`
# only if it still points at this DIR.  SLURM_CI_ETC_LINK=0 disables this.
readonly ETC_CONF=/etc/slurm/slurm.conf
link_etc_conf() {
    local conf="$1"
    [[ "${SLURM_CI_ETC_LINK:-1}" == 1 ]] || return 0
    if [[ -e "$ETC_CONF" && ! -L "$ETC_CONF" ]]; then
        log "WARNING: $ETC_CONF is a regular file; not replacing it (srun inside snakemake jobs will use it)"
        return 0
    fi
    mkdir -p "$(dirname "$ETC_CONF")"
    ln -sfn "$conf" "$ETC_CONF"
}
unlink_etc_conf() {
    local conf="$1"
    if [[ -L "$ETC_CONF" && "$(readlink "$ETC_CONF")" == "$conf" ]]; then
        rm -f "$ETC_CONF"
    fi
}

abs_dir() {
    local d="$1"
    [[ -n "$d" ]] || die "usage: $0 start|stop DIR"
    [[ "$d" != *[[:space:]]* ]] || die "DIR must not contain whitespace (slurm.conf cannot quote it): $d"
    mkdir -p "$d"
    (cd "$d" && pwd -P)
}

# --------------------------------------------------------------------------
# start
# --------------------------------------------------------------------------
cmd_start() {
    need_root
    all_bins_present || die "binaries missing; run: bash $0 install"
    local dir t0=$SECONDS
    dir="$(abs_dir "${1:-}")"
    # Unix socket paths are limited to 108 bytes.
    ((${#dir} <= 80)) || die "DIR path too long for unix sockets (>80 chars): $dir"
    [[ -e "$dir/slurm.conf" ]] && die "$dir already holds a cluster; stop it and use a new DIR"
    # If anything below fails, stop whatever was already started.
    START_DIR="$dir"
    trap 'rc=$?; if ((rc != 0)); then log "start failed; stopping what was started"; cmd_stop "$START_DIR" || true; fi' EXIT

    local run="$dir/run" logd="$dir/log" mdir="$dir/munge" db="$dir/mysql"
    mkdir -p "$run" "$logd" "$dir/state" "$dir/spool/slurmd" "$db"
    # munged refuses group/other-writable dirs on the key/socket path (and
    # warns unless the socket dir is world-executable); the key itself is 0600.
    mkdir -p "$mdir"
    chmod 755 "$mdir"
    chmod 755 "$dir" "$run" "$logd"

    local base="${SLURM_CI_PORT_BASE:-26817}"
    local ctld_port slurmd_port dbd_port mysql_port
    pick_port "$base"; ctld_port="$PICKED"
    pick_port "$((base + 1))"; slurmd_port="$PICKED"
    pick_port "$((base + 2))"; dbd_port="$PICKED"
    pick_port "$((base + 3))"; mysql_port="$PICKED"

    local cpus mem_mb real_mem def_mem
    cpus="$(nproc)"
    mem_mb="$(awk '/^MemTotal:/ {print int($2/1024)}' /proc/meminfo)"
    # Leave headroom: slurmd drains the node if RealMemory exceeds what it sees.
    real_mem=$((mem_mb * 9 / 10))
    def_mem=$((real_mem / cpus))
    ((def_mem > 1024)) && def_mem=1024

    # ---------------- munge (own key + socket) ----------------
    local msock="$mdir/munge.socket.2"
    head -c 1024 /dev/urandom >"$mdir/munge.key"
    chmod 600 "$mdir/munge.key"
    log "starting munged"
    # --force: allow running as root / with a key outside /etc/munge.
    timeout 30 munged --force \
        --key-file="$mdir/munge.key" --socket="$msock" \
        --pid-file="$run/munged.pid" --log-file="$logd/munged.log" \
        --seed-file="$mdir/munged.seed" ||
        { tail -n 20 "$logd/munged.log" >&2 || true; die "munged failed to start"; }
    # shellcheck disable=SC2016  # $1 is expanded by the inner bash
    wait_for "munged" 20 "$logd/munged.log" \
        bash -c 'munge -S "$1" -n </dev/null | unmunge -S "$1"' _ "$msock"

    # ---------------- MariaDB (datadir under DIR, TCP on 127.0.0.1) ----------------
    local dbpass
    dbpass="$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    log "initialising MariaDB datadir"
    timeout 120 mariadb-install-db --no-defaults --user=root --datadir="$db/data" \
        --auth-root-authentication-method=socket --skip-test-db \
        >"$logd/mariadb-install.log" 2>&1 ||
        { tail -n 30 "$logd/mariadb-install.log" >&2; die "mariadb-install-db failed"; }
    # Executed by mariadbd at startup: the slurmdbd DB user (TCP from 127.0.0.1).
    cat >"$db/init.sql" <<EOF
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$dbpass';
GRANT ALL PRIVILEGES ON *.* TO 'slurm'@'127.0.0.1';
FLUSH PRIVILEGES;
EOF
    chmod 600 "$db/init.sql"
    log "starting mariadbd on 127.0.0.1:$mysql_port"
    # innodb_*: values slurmdbd checks for (else an error line in its log); the
    # buffer pool is only reserved address space, not resident memory.
    nohup mariadbd --no-defaults --user=root --datadir="$db/data" \
        --socket="$db/mysqld.sock" --pid-file="$run/mariadbd.pid" \
        --log-error="$logd/mariadb.log" --bind-address=127.0.0.1 --port="$mysql_port" \
        --skip-name-resolve --init-file="$db/init.sql" \
        --innodb-buffer-pool-size=1024M --innodb-lock-wait-timeout=900 \
        --innodb-log-file-size=64M >/dev/null 2>&1 </dev/null &
    wait_for "mariadbd" 60 "$logd/mariadb.log" \
        mariadb --no-defaults --protocol=tcp -h 127.0.0.1 -P "$mysql_port" \
        -u slurm "-p$dbpass" -e 'SELECT 1'

    # ---------------- config files ----------------
    cat >"$dir/slurm.conf" <<EOF
# Generated by tests/slurm/cluster.sh -- single-node CI cluster.
ClusterName=$SLURM_CI_CLUSTER
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# Our own munged socket (not /run/munge).
AuthInfo=socket=$msock
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/slurmd
SlurmctldPidFile=$run/slurmctld.pid
SlurmdPidFile=$run/slurmd.pid
SlurmctldLogFile=$logd/slurmctld.log
SlurmdLogFile=$logd/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups in a container: plain /proc process tracking, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SchedulerType=sched/backfill
MpiDefault=none
# Trust the node line below instead of the detected hardware (no drain on
# topology/memory mismatch in containers).
SlurmdParameters=config_overrides
ReturnToService=2
MailProg=/bin/true
# Keep finished jobs visible to squeue/scontrol for 5 min.
MinJobAge=300
KillWait=5
InactiveLimit=0
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$dbd_port
# Connections to slurmdbd (slurmctld, sacct, sacctmgr) authenticate through
# this munge socket, NOT AuthInfo; without it they try /run/munge.
AccountingStoragePass=$msock
JobCompType=jobcomp/none
# Without a default, a job without --mem would get the whole node's memory.
DefMemPerCPU=$def_mem
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$real_mem State=UNKNOWN
PartitionName=$SLURM_CI_PARTITION Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
    # slurmdbd.conf is looked up next to \$SLURM_CONF; it must be 0600.
    cat >"$dir/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$msock
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$dbd_port
SlurmUser=root
DebugLevel=info
LogFile=$logd/slurmdbd.log
PidFile=$run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$mysql_port
StorageUser=slurm
StoragePass=$dbpass
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$dir/slurmdbd.conf"
    export SLURM_CONF="$dir/slurm.conf"
    link_etc_conf "$SLURM_CONF"

    # ---------------- slurmdbd + associations ----------------
    log "starting slurmdbd on port $dbd_port"
    timeout 30 slurmdbd || { tail -n 30 "$logd/slurmdbd.log" >&2 || true; die "slurmdbd failed"; }
    wait_for "slurmdbd" 60 "$logd/slurmdbd.log" \
        timeout 10 sacctmgr -n list cluster
    timeout 20 sacctmgr -i add cluster "$SLURM_CI_CLUSTER" >>"$logd/sacctmgr.log" 2>&1 || true
    timeout 20 sacctmgr -i add account "$SLURM_CI_ACCOUNT" Cluster="$SLURM_CI_CLUSTER" \
        Description=ci Organization=ci >>"$logd/sacctmgr.log" 2>&1 || true
    timeout 20 sacctmgr -i add user root Account="$SLURM_CI_ACCOUNT" \
        Cluster="$SLURM_CI_CLUSTER" >>"$logd/sacctmgr.log" 2>&1 || true
    timeout 20 sacctmgr -n -P list assoc user=root account="$SLURM_CI_ACCOUNT" format=account |
        grep -qx "$SLURM_CI_ACCOUNT" || die "could not create association root/$SLURM_CI_ACCOUNT"

    # ---------------- slurmctld + slurmd ----------------
    log "starting slurmctld on port $ctld_port"
    timeout 30 slurmctld || { tail -n 30 "$logd/slurmctld.log" >&2 || true; die "slurmctld failed"; }
    wait_for "slurmctld" 60 "$logd/slurmctld.log" timeout 10 scontrol ping
    log "starting slurmd on port $slurmd_port"
    # -N: node name from slurm.conf regardless of the container's hostname.
    timeout 30 slurmd -N localhost || { tail -n 30 "$logd/slurmd.log" >&2 || true; die "slurmd failed"; }

    local remaining=$((START_TIMEOUT - (SECONDS - t0)))
    ((remaining > 10)) || remaining=10
    # shellcheck disable=SC2016  # expanded by the inner bash
    wait_for "node localhost idle" "$remaining" "$logd/slurmd.log" \
        bash -c '[[ "$(timeout 10 sinfo -h -n localhost -o %T)" == idle ]]'
    wait_for "sacct" 20 "$logd/slurmdbd.log" timeout 10 sacct -n -X

    local envs
    envs="$(printf 'export SLURM_CONF=%q\nexport SLURM_CI_ACCOUNT=%q\nexport SLURM_CI_PARTITION=%q\n' \
        "$dir/slurm.conf" "$SLURM_CI_ACCOUNT" "$SLURM_CI_PARTITION")"
    printf '%s\n' "$envs" >"$dir/env.sh"
    printf '%s\n' "$envs"
    trap - EXIT
    log "cluster up in $((SECONDS - t0))s (logs: $logd)"
}

# --------------------------------------------------------------------------
# stop
# --------------------------------------------------------------------------
cmd_stop() {
    local dir run
    [[ -n "${1:-}" && -d "$1" ]] || die "usage: $0 stop DIR (existing)"
    dir="$(cd "$1" && pwd -P)"
    run="$dir/run"
    export SLURM_CONF="$dir/slurm.conf"
    if live_pid "$run/slurmctld.pid" slurmctld >/dev/null 2>&1; then
        # Cancel leftover jobs so no slurmstepd/job processes outlive slurmd.
        local jobs
        jobs="$(timeout 10 squeue -h -o %i 2>/dev/null || true)"
        if [[ -n "$jobs" ]]; then
            log "cancelling jobs: $(tr '\n' ' ' <<<"$jobs")"
            # shellcheck disable=SC2086
            timeout 10 scancel $jobs || true
            local end=$((SECONDS + 15))
            while [[ -n "$(timeout 10 squeue -h -t R,CG,PD -o %i 2>/dev/null || true)" ]] &&
                ((SECONDS < end)); do sleep 0.5; done
        fi
    fi
    stop_pidfile "$run/slurmd.pid" slurmd 30
    stop_pidfile "$run/slurmctld.pid" slurmctld 30
    stop_pidfile "$run/slurmdbd.pid" slurmdbd 30
    stop_pidfile "$run/mariadbd.pid" mariadbd 60
    stop_pidfile "$run/munged.pid" munged 15
    unlink_etc_conf "$dir/slurm.conf"
    log "stopped"
}

case "${1:-}" in
    install) cmd_install ;;
    start) shift; cmd_start "$@" ;;
    stop) shift; cmd_stop "$@" ;;
    *) die "usage: $0 install | start DIR | stop DIR" ;;
esac

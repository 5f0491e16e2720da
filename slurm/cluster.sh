#!/usr/bin/env bash
# One-node Slurm cluster with accounting on localhost (Debian 12, run as root, no systemd needed).
#
#   cluster.sh start    install packages if missing, write configs, start munged, MariaDB, slurmdbd,
#                       slurmctld, slurmd; wait until the node is usable and sacct works
#   cluster.sh stop     stop all five daemons (running job steps are left alone)
#   cluster.sh status   daemons up/down, sinfo, whether sacct works (exit 0 only if all is well)
#   cluster.sh reset    cancel jobs, stop, wipe Slurm state + spool, recreate the accounting database,
#                       start again (job ids restart at 1 with an empty accounting history)
#
# Knobs (environment variables) are listed below and in README.md. Safe to run repeatedly.
set -euo pipefail

CLUSTER_NAME=${SLURM_CLUSTER_NAME:-pipeline}
PARTITION=${SLURM_PARTITION_NAME:-debug}
CPUS=${SLURM_CPUS:-$(nproc --all)}
MEM_MB=${SLURM_MEM_MB:-16000}
[[ $CPUS =~ ^[1-9][0-9]*$ && $MEM_MB =~ ^[1-9][0-9]*$ ]] || {
    echo "[cluster] ERROR: SLURM_CPUS and SLURM_MEM_MB must be positive integers" >&2; exit 2; }
# two sockets where the CPUs split evenly, as on most cluster nodes: a step that gets one CPU then binds to one
# socket (one CPU here), where a single socket would have covered the whole machine (Slurm 22.05's implicit
# socket binding of a step without --cpus-per-task)
SOCKETS=${SLURM_SOCKETS:-$(( CPUS % 2 == 0 ? 2 : 1 ))}
(( SOCKETS >= 1 && CPUS % SOCKETS == 0 )) || {
    echo "[cluster] ERROR: SLURM_SOCKETS=$SOCKETS must divide SLURM_CPUS=$CPUS" >&2; exit 2; }
DEF_MEM_PER_CPU=${SLURM_DEF_MEM_PER_CPU:-$((MEM_MB / CPUS))}
MAX_JOB_COUNT=${SLURM_MAX_JOB_COUNT:-100000}
MAX_ARRAY_SIZE=${SLURM_MAX_ARRAY_SIZE:-1001}
START_TIMEOUT=${SLURM_START_TIMEOUT:-60}
CRED_EXPIRE=${SLURM_CRED_EXPIRE:-20}
LOG_DIR=${SLURM_LOG_DIR:-/var/log/slurm}
DB_NAME=${SLURM_DB_NAME:-slurm_acct_db}
DB_USER=${SLURM_DB_USER:-slurm}

CONF_DIR=/etc/slurm
SLURM_CONF_FILE=$CONF_DIR/slurm.conf
DBD_CONF_FILE=$CONF_DIR/slurmdbd.conf
STATE_DIR=/var/lib/slurm/slurmctld
SPOOL_DIR=/var/spool/slurmd
RUN_DIR=/run/slurm
MUNGE_RUN=/run/munge
MUNGE_KEY=/etc/munge/munge.key
PACKAGES=(slurm-wlm munge mariadb-server slurmdbd)

T0=${EPOCHREALTIME/./}
log() {
    local us=$(( ${EPOCHREALTIME/./} - T0 ))
    printf '[cluster %3d.%01ds] %s\n' $((us / 1000000)) $((us / 100000 % 10)) "$*"
}
die() { printf '[cluster] ERROR: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root"

# ---------------------------------------------------------------------------------------------------
# installation
# ---------------------------------------------------------------------------------------------------
packages_installed() {
    local p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' || return 1
    done
}

install_packages() {
    if packages_installed; then return 0; fi
    log "installing ${PACKAGES[*]} (Debian packages)"
    export DEBIAN_FRONTEND=noninteractive
    local apt_opts=(-y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
    if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
        apt-get update -q >/dev/null || die "apt-get update failed"
        apt-get install "${apt_opts[@]}" "${PACKAGES[@]}" >/dev/null || die "apt-get install failed"
    elif ! apt-get install "${apt_opts[@]}" "${PACKAGES[@]}" >/dev/null 2>&1; then
        log "install failed with the current package lists; running apt-get update once"
        apt-get update -q >/dev/null || die "apt-get update failed"
        apt-get install "${apt_opts[@]}" "${PACKAGES[@]}" >/dev/null || die "apt-get install failed"
    fi
    packages_installed || die "packages still missing after apt-get install"
    log "packages installed"
}

ensure_users_and_dirs() {
    getent group slurm >/dev/null || groupadd --system slurm
    id slurm >/dev/null 2>&1 || useradd --system -g slurm -d /var/lib/slurm -s /usr/sbin/nologin slurm
    getent group munge >/dev/null || groupadd --system munge
    id munge >/dev/null 2>&1 || useradd --system -g munge -d /nonexistent -s /usr/sbin/nologin munge
    install -d -m 755 "$CONF_DIR"
    install -d -o slurm -g slurm -m 755 /var/lib/slurm "$STATE_DIR" "$LOG_DIR" "$RUN_DIR"
    install -d -o root -g root -m 755 "$SPOOL_DIR"
    install -d -o munge -g munge -m 700 /etc/munge /var/lib/munge /var/log/munge
    install -d -o munge -g munge -m 755 "$MUNGE_RUN"
    if [[ ! -s $MUNGE_KEY ]]; then
        log "creating munge key"
        if command -v mungekey >/dev/null; then
            mungekey --create --keyfile="$MUNGE_KEY" --force
        else
            dd if=/dev/urandom of="$MUNGE_KEY" bs=1024 count=1 status=none
        fi
    fi
    chown munge:munge "$MUNGE_KEY"
    chmod 400 "$MUNGE_KEY"
}

# ---------------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------------
# write_if_changed FILE OWNER MODE <content on stdin>; returns 0 if the file changed, 1 otherwise
write_if_changed() {
    local file=$1 owner=$2 mode=$3 tmp
    tmp=$(mktemp)
    cat >"$tmp"
    if [[ -f $file ]] && cmp -s "$tmp" "$file"; then
        rm -f "$tmp"; chown "$owner" "$file"; chmod "$mode" "$file"; return 1
    fi
    install -o "${owner%%:*}" -g "${owner##*:}" -m "$mode" "$tmp" "$file"
    rm -f "$tmp"
    return 0
}

db_password() {
    # keep the password already in slurmdbd.conf so MariaDB and slurmdbd stay in sync
    if [[ -n ${SLURM_DB_PASS:-} ]]; then echo "$SLURM_DB_PASS"; return; fi
    if [[ -f $DBD_CONF_FILE ]] && grep -q '^StoragePass=' "$DBD_CONF_FILE"; then
        sed -n 's/^StoragePass=//p' "$DBD_CONF_FILE" | head -n1; return
    fi
    tr -dc 'A-Za-z0-9' </dev/urandom | head -c 24 || true
}

SLURM_CONF_CHANGED=0
DBD_CONF_CHANGED=0
write_configs() {
    (( MEM_MB >= 256 )) || die "SLURM_MEM_MB=$MEM_MB is too small"
    DB_PASS=$(db_password)
    if write_if_changed "$SLURM_CONF_FILE" root:root 644 <<EOF; then SLURM_CONF_CHANGED=1; fi
# Written by slurm/cluster.sh -- edits are overwritten on the next start.
ClusterName=$CLUSTER_NAME
SlurmctldHost=localhost
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
# credential lifetime; a requeued job also waits this long (+1 s) before it may run again (default 120)
AuthInfo=cred_expire=$CRED_EXPIRE
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
# bind every task to the CPUs it was given (sched_setaffinity), as clusters do: a step that asks for fewer CPUs
# than its job, or a job that asks for fewer than torch uses, shows up here and not first on a cluster
TaskPlugin=task/affinity
ReturnToService=2
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd.pid
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$STATE_DIR
SlurmdSpoolDir=$SPOOL_DIR
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# the node as configured below even where it differs from what slurmd detects (SLURM_CPUS)
SlurmdParameters=config_overrides
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,sched_interval=5,bf_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# without a default, a job that asks for no memory would take the whole node
DefMemPerCPU=$DEF_MEM_PER_CPU
MaxJobCount=$MAX_JOB_COUNT
MaxArraySize=$MAX_ARRAY_SIZE
JobRequeue=1
KillWait=5
MinJobAge=60
InactiveLimit=0
Waittime=0
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
# enforce the limits set with sacctmgr (MaxSubmitJobs, QOS MaxSubmitJobsPerUser, ...) as sites do
AccountingStorageEnforce=associations,limits
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
JobCompType=jobcomp/none
MailProg=/bin/true
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS Boards=1 SocketsPerBoard=$SOCKETS CoresPerSocket=$((CPUS / SOCKETS)) ThreadsPerCore=1 RealMemory=$MEM_MB State=UNKNOWN
PartitionName=$PARTITION Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
    if write_if_changed "$DBD_CONF_FILE" slurm:slurm 600 <<EOF; then DBD_CONF_CHANGED=1; fi
# Written by slurm/cluster.sh -- edits are overwritten on the next start.
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=slurm
LogFile=$LOG_DIR/slurmdbd.log
PidFile=$RUN_DIR/slurmdbd.pid
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=localhost
StoragePort=3306
StorageLoc=$DB_NAME
StorageUser=$DB_USER
StoragePass=$DB_PASS
EOF
    (( SLURM_CONF_CHANGED )) && log "wrote $SLURM_CONF_FILE (CPUs=$CPUS RealMemory=${MEM_MB}MB partition=$PARTITION)"
    (( DBD_CONF_CHANGED )) && log "wrote $DBD_CONF_FILE"
    return 0
}

# ---------------------------------------------------------------------------------------------------
# process helpers
# ---------------------------------------------------------------------------------------------------
# daemon_pid NAME PIDFILE: print the pid of the running daemon (pid file first, exact name second)
daemon_pid() {
    local name=$1 pidfile=$2 pid
    if [[ -s $pidfile ]]; then
        pid=$(tr -dc 0-9 <"$pidfile")
        if [[ -n $pid && -r /proc/$pid/comm && $(cat "/proc/$pid/comm" 2>/dev/null) == "$name" ]]; then
            echo "$pid"; return 0
        fi
    fi
    pid=$(pgrep -x "$name" | head -n1 || true)
    [[ -n $pid ]] && { echo "$pid"; return 0; }
    return 1
}

# wait_until DESCRIPTION COMMAND...: poll until COMMAND succeeds or the start deadline passes
DEADLINE=0
wait_until() {
    local what=$1; shift
    while ! "$@" >/dev/null 2>&1; do
        if (( $(date +%s) >= DEADLINE )); then return 1; fi
        sleep 0.2
    done
}

# stop_pid NAME PIDFILE [SECONDS]: SIGTERM, wait, then SIGKILL
stop_daemon() {
    local name=$1 pidfile=$2 wait_s=${3:-20} pid i
    pid=$(daemon_pid "$name" "$pidfile") || { log "$name not running"; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < wait_s * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; log "stopped $name (pid $pid)"; return 0; }
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$pidfile"
    log "killed $name (pid $pid) after ${wait_s}s"
}

MUNGE_UP=0
MARIADB_UP=0
kill_tree() {  # SIGKILL a process and all its descendants
    local child
    for child in $(pgrep -P "$1" || true); do kill_tree "$child"; done
    kill -KILL "$1" 2>/dev/null || true
}

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
mariadb_ok() { mysqladmin --connect-timeout=2 ping >/dev/null 2>&1; }
dbd_ok() { sacctmgr -n -P list cluster format=cluster >/dev/null 2>&1; }
ctld_ok() { scontrol ping 2>/dev/null | grep -q 'is UP'; }
sacct_ok() { sacct -n -X -S now -E now >/dev/null 2>&1; }
node_state() { sinfo -h -n localhost -o %T 2>/dev/null | head -n1; }
node_ready() { [[ $(node_state) =~ ^(idle|mixed|allocated|completing)$ ]]; }

fail_with_log() {
    local msg=$1 logf=${2:-}
    printf '[cluster] ERROR: %s\n' "$msg" >&2
    if [[ -n $logf && -f $logf ]]; then
        printf '[cluster] last lines of %s:\n' "$logf" >&2
        tail -n 15 "$logf" | sed 's/^/    /' >&2
    fi
    exit 1
}

# ---------------------------------------------------------------------------------------------------
# daemons
# ---------------------------------------------------------------------------------------------------
start_munge() {
    local pid
    (( MUNGE_UP )) && return 0
    MUNGE_UP=1
    if pid=$(daemon_pid munged "$MUNGE_RUN/munged.pid") && munge_ok; then
        log "munged already running (pid $pid)"; return 0
    fi
    install -d -o munge -g munge -m 755 "$MUNGE_RUN"
    runuser -u munge -- /usr/sbin/munged || fail_with_log "munged failed to start" /var/log/munge/munged.log
    wait_until munge munge_ok || fail_with_log "munge does not answer" /var/log/munge/munged.log
    log "started munged"
}

start_mariadb() {
    (( MARIADB_UP )) && return 0
    MARIADB_UP=1
    if mariadb_ok; then log "MariaDB already running"; return 0; fi
    /etc/init.d/mariadb start >/dev/null 2>&1 || true
    wait_until mariadb mariadb_ok || die "MariaDB did not start (see /var/log/mysql or /var/log/syslog)"
    log "started MariaDB"
}

ensure_database() {
    # root connects through the unix socket (Debian's default unix_socket auth)
    mysql -u root <<EOF || die "could not create the accounting database"
CREATE DATABASE IF NOT EXISTS \`$DB_NAME\`;
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
ALTER USER '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL PRIVILEGES ON \`$DB_NAME\`.* TO '$DB_USER'@'localhost';
FLUSH PRIVILEGES;
EOF
}

start_slurmdbd() {
    local pid
    if pid=$(daemon_pid slurmdbd "$RUN_DIR/slurmdbd.pid"); then
        if (( DBD_CONF_CHANGED )); then
            log "slurmdbd.conf changed: restarting slurmdbd"
            stop_daemon slurmdbd "$RUN_DIR/slurmdbd.pid"
        else
            log "slurmdbd already running (pid $pid)"
            wait_until slurmdbd dbd_ok || fail_with_log "slurmdbd does not answer" "$LOG_DIR/slurmdbd.log"
            return 0
        fi
    fi
    /usr/sbin/slurmdbd || fail_with_log "slurmdbd failed to start" "$LOG_DIR/slurmdbd.log"
    wait_until slurmdbd dbd_ok || fail_with_log "slurmdbd does not answer" "$LOG_DIR/slurmdbd.log"
    log "started slurmdbd"
}

CLUSTER_ADDED=0
ensure_cluster() {
    # associations of the cluster as account|user lines; empty if the cluster is not registered
    local assoc
    assoc=$(sacctmgr -n -P list assoc cluster="$CLUSTER_NAME" format=account,user 2>/dev/null || true)
    if [[ -z $assoc ]] && ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER_NAME"; then
        sacctmgr -i add cluster "$CLUSTER_NAME" >/dev/null || die "sacctmgr add cluster $CLUSTER_NAME failed"
        CLUSTER_ADDED=1
        log "registered cluster '$CLUSTER_NAME' in accounting"
        assoc=$(sacctmgr -n -P list assoc cluster="$CLUSTER_NAME" format=account,user)
    fi
    # adding a cluster creates the 'root' account and root's association; also add an account named
    # after the cluster for jobs (-A $CLUSTER_NAME) and make sure root has an association
    if ! grep -qx "$CLUSTER_NAME|" <<<"$assoc"; then
        sacctmgr -i add account "$CLUSTER_NAME" cluster="$CLUSTER_NAME" \
            description="local jobs" organization=local >/dev/null || die "sacctmgr add account failed"
        log "added account '$CLUSTER_NAME'"
    fi
    if ! grep -qx "root|root" <<<"$assoc"; then
        sacctmgr -i add user root account=root cluster="$CLUSTER_NAME" >/dev/null || die "sacctmgr add user root failed"
        log "added user root to account root"
    fi
}

start_slurmctld() {
    local pid
    if pid=$(daemon_pid slurmctld "$RUN_DIR/slurmctld.pid"); then
        if (( CLUSTER_ADDED || SLURM_CONF_CHANGED )); then
            log "restarting slurmctld (cluster newly registered or slurm.conf changed)"
            stop_daemon slurmctld "$RUN_DIR/slurmctld.pid" 30
        else
            log "slurmctld already running (pid $pid)"
            wait_until slurmctld ctld_ok || fail_with_log "slurmctld does not answer" "$LOG_DIR/slurmctld.log"
            return 0
        fi
    fi
    /usr/sbin/slurmctld || fail_with_log "slurmctld failed to start" "$LOG_DIR/slurmctld.log"
    wait_until slurmctld ctld_ok || fail_with_log "slurmctld does not answer" "$LOG_DIR/slurmctld.log"
    log "started slurmctld"
}

start_slurmd() {
    local pid
    if pid=$(daemon_pid slurmd "$RUN_DIR/slurmd.pid"); then
        if (( SLURM_CONF_CHANGED )); then
            log "slurm.conf changed: restarting slurmd"
            stop_daemon slurmd "$RUN_DIR/slurmd.pid"
        else
            log "slurmd already running (pid $pid)"; return 0
        fi
    fi
    # the machine's host name is not 'localhost': tell slurmd which node it is
    /usr/sbin/slurmd -N localhost || fail_with_log "slurmd failed to start" "$LOG_DIR/slurmd.log"
    log "started slurmd"
}

PREPARED=0
prepare() {
    (( PREPARED )) && return 0
    install_packages
    ensure_users_and_dirs
    write_configs
    PREPARED=1
}

cmd_start() {
    prepare
    (( DEADLINE )) || DEADLINE=$(( $(date +%s) + START_TIMEOUT ))
    start_munge
    start_mariadb
    ensure_database
    start_slurmdbd
    ensure_cluster
    start_slurmctld
    start_slurmd
    # a node left DOWN/DRAIN by an earlier run (e.g. killed slurmd) is put back into service
    if [[ $(node_state) =~ ^(down|drain|drained|draining)\*?$ ]]; then
        scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true
    fi
    wait_until node node_ready ||
        fail_with_log "node not ready within ${START_TIMEOUT}s (state: $(node_state || echo '?'))" "$LOG_DIR/slurmd.log"
    wait_until sacct sacct_ok ||
        fail_with_log "sacct does not work within ${START_TIMEOUT}s" "$LOG_DIR/slurmdbd.log"
    log "cluster '$CLUSTER_NAME' ready: node localhost $(node_state), $(sinfo -h -n localhost -o '%c CPUs, %m MB'), sacct OK"
}

stop_slurm() {
    stop_daemon slurmd "$RUN_DIR/slurmd.pid"
    stop_daemon slurmctld "$RUN_DIR/slurmctld.pid" 30
    stop_daemon slurmdbd "$RUN_DIR/slurmdbd.pid" 30
}

cmd_stop() {
    stop_slurm
    if mariadb_ok; then
        /etc/init.d/mariadb stop >/dev/null 2>&1 || true
        mariadb_ok && log "MariaDB still running" || log "stopped MariaDB"
    else
        log "MariaDB not running"
    fi
    stop_daemon munged "$MUNGE_RUN/munged.pid"
}

cmd_status() {
    local ok=0 name pidfile pid
    for name in munged slurmdbd slurmctld slurmd; do
        case $name in
            munged) pidfile=$MUNGE_RUN/munged.pid ;;
            *) pidfile=$RUN_DIR/$name.pid ;;
        esac
        if pid=$(daemon_pid "$name" "$pidfile"); then
            printf '%-10s up (pid %s)\n' "$name" "$pid"
        else
            printf '%-10s down\n' "$name"; ok=1
        fi
    done
    if command -v mysqladmin >/dev/null && mariadb_ok; then
        printf '%-10s up\n' mariadb
    else
        printf '%-10s down\n' mariadb; ok=1
    fi
    if command -v sinfo >/dev/null && ctld_ok; then
        sinfo -o '%P %a %l %D %T %c %m %N' 2>&1 || ok=1
        node_ready || ok=1
    else
        echo "sinfo: slurmctld not reachable"; ok=1
    fi
    if command -v sacct >/dev/null && sacct_ok; then
        echo "sacct: works"
    else
        echo "sacct: NOT working"; ok=1
    fi
    return $ok
}

cmd_reset() {
    prepare
    if command -v scontrol >/dev/null && ctld_ok; then
        local ids
        ids=$(squeue -h -o %A 2>/dev/null | tr '\n' ' ')
        if [[ -n ${ids// /} ]]; then
            log "cancelling jobs: $ids"
            # shellcheck disable=SC2086
            scancel $ids 2>/dev/null || true
            # let slurmstepd finish its SIGTERM .. KillWait .. SIGKILL sequence (submitit ignores SIGTERM)
            local i
            for ((i = 0; i < 100; i++)); do
                [[ -z $(squeue -h -o %A 2>/dev/null) ]] && break
                sleep 0.2
            done
        fi
    fi
    stop_slurm
    # job steps (and what they run) must not outlive the state they belong to
    local pid
    for pid in $(pgrep -x slurmstepd || true); do kill_tree "$pid"; done
    log "wiping $STATE_DIR and $SPOOL_DIR"
    rm -rf "${STATE_DIR:?}" "${SPOOL_DIR:?}"
    ensure_users_and_dirs
    DEADLINE=$(( $(date +%s) + START_TIMEOUT ))
    start_munge
    start_mariadb
    log "dropping accounting database $DB_NAME"
    mysql -u root -e "DROP DATABASE IF EXISTS \`$DB_NAME\`;" || die "could not drop $DB_NAME"
    cmd_start
}

case ${1:-} in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    reset) cmd_reset ;;
    *) echo "usage: $0 {start|stop|status|reset}" >&2; exit 2 ;;
esac

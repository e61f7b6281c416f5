#!/usr/bin/env bash
# n2vpipe-cron.sh -- one cron-triggered n2vpipe run: denoise what has arrived in INPUT_DIR.
#
#   workflow/cron/n2vpipe-cron.sh INPUT_DIR RESULTS_DIR [-- EXTRA SNAKEMAKE ARGS...]
#
# crontab -e (every 10 minutes; cron mails whatever the script prints):
#   PATH=/usr/local/bin:/usr/bin:/bin
#   MAILTO=you@example.org
#   */10 * * * * /opt/n2vpipe/workflow/cron/n2vpipe-cron.sh /data/incoming /data/n2vpipe
#
# * One run at a time: `flock -n` on RESULTS_DIR/.n2vpipe-cron.lock. A run that finds it
#   held, or finds RESULTS_DIR/.n2vpipe.lock held by a run started otherwise (by hand, from
#   another clone), prints one line and exits 0 (the running one will finish the work).
# * Only complete inputs are taken: unchanged for N2VPIPE_MIN_AGE seconds and, when the
#   config sets arrival.marker_suffix (e.g. ".done"), with their marker file. Others are
#   left for a later run (named in the log).
# * snakemake runs with --keep-going: a failed acquisition costs no other one its results
#   and is retried by the next run (its missing outputs are rebuilt).
# * One log per run: RESULTS_DIR/logs/cron/YYYYmmdd-HHMMSS-PID.log (+ .config.yaml with the
#   settings it used); latest.log points at the newest.
# * Silent when all went well. When a job failed it prints the failed jobs with their log
#   paths and exits non-zero (snakemake's exit status), so cron mails it.
# * Inputs the pipeline skips (a name it cannot use, a dangling link, a file it cannot read)
#   are printed once, by the first run that sees them; later runs stay silent about them
#   (RESULTS_DIR/logs/cron/skipped-inputs.reported lists those already reported). One that
#   goes away is forgotten, and printed again should it come back.
# * Each run ends its log with a short summary (n2vpipe.run_summary, from results/summary.csv):
#   acquisitions processed, failed, flagged by the quality checks (and the files to look at),
#   skipped and waiting. RESULTS_DIR/logs/cron/latest-summary.txt holds the newest (a failed
#   run names it).
#
# Environment (all optional):
#   N2VPIPE_PROFILE     snakemake profile, default "slurm" (slurm/config.v8+.yaml);
#                       empty: run on this machine with --cores "${N2VPIPE_CORES:-all}"
#   N2VPIPE_CONFIGFILE  a config file of yours (e.g. site/training settings), read after
#                       config/config.yaml; INPUT_DIR/RESULTS_DIR/N2VPIPE_MIN_AGE win over it
#   N2VPIPE_MIN_AGE     seconds an input must be unchanged before it is taken (default 300)
#   N2VPIPE_SNAKEMAKE   snakemake executable (default: .venv/bin/snakemake of this
#                       repository if there is one, else snakemake on PATH)
#   N2VPIPE_LOG_DAYS    delete this script's logs older than this many days (default 30; 0 = keep)
#   N2VPIPE_PYTHON      Python with n2vpipe's dependencies, for the run summary (default: the
#                       python beside the snakemake executable, else python3 on PATH)
# Exit status: 0 = done, nothing to do, or another run active; 2 = usage error;
# otherwise snakemake's (1 = a job failed).
set -euo pipefail

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
}
fail() {
    printf 'n2vpipe-cron: %s\n' "$*" >&2
    exit 2
}

[[ $# -ge 2 ]] || usage
input_arg="$1"
results_arg="$2"
shift 2
if [[ $# -gt 0 ]]; then
    [[ "$1" == "--" ]] || usage
    shift
fi
for arg in "$@"; do
    case "$arg" in
        --configfile | --configfiles | --configfile=*)
            fail "pass your config file as N2VPIPE_CONFIGFILE, not --configfile (it would replace the run's settings)" ;;
    esac
done

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
min_age="${N2VPIPE_MIN_AGE:-300}"
[[ "$min_age" =~ ^[0-9]+([.][0-9]+)?$ ]] || fail "N2VPIPE_MIN_AGE must be a number of seconds, not '$min_age'"
log_days="${N2VPIPE_LOG_DAYS:-30}"
[[ "$log_days" =~ ^[0-9]+$ ]] || fail "N2VPIPE_LOG_DAYS must be a whole number of days, not '$log_days'"
user_config="${N2VPIPE_CONFIGFILE:-}"
if [[ -n "$user_config" ]]; then
    [[ -f "$user_config" ]] || fail "N2VPIPE_CONFIGFILE $user_config does not exist"
    user_config="$(cd "$(dirname "$user_config")" && pwd)/$(basename "$user_config")"
fi
snakemake_cmd="${N2VPIPE_SNAKEMAKE:-}"
if [[ -z "$snakemake_cmd" ]]; then
    if [[ -x "$repo/.venv/bin/snakemake" ]]; then
        snakemake_cmd="$repo/.venv/bin/snakemake"
    else
        snakemake_cmd="snakemake"
    fi
fi
command -v "$snakemake_cmd" >/dev/null || fail "snakemake not found ($snakemake_cmd); set N2VPIPE_SNAKEMAKE or PATH"
python_cmd="${N2VPIPE_PYTHON:-$(dirname "$(command -v "$snakemake_cmd")")/python}"
[[ -n "${N2VPIPE_PYTHON:-}" || -x "$python_cmd" ]] || python_cmd="python3"

# An unmounted/missing input folder is worth a mail: exit 1.
if [[ ! -d "$input_arg" ]]; then
    printf 'n2vpipe-cron: input folder %s does not exist or is not a folder\n' "$input_arg" >&2
    exit 1
fi
# Absolute paths, the same every run (snakemake compares recorded input paths).
input_dir="$(cd "$input_arg" && pwd)"
# Results kept apart from the inputs (links resolved), checked before this script writes
# its logs there; the workflow checks the same again (and more) before any work.
real_input="$(realpath -e "$input_arg")"
real_results="$(realpath -m "$results_arg")"
if [[ "$real_results/" == "$real_input/"* || "$real_input/" == "$real_results/"* ]]; then
    printf 'n2vpipe-cron: results folder %s (= %s) and input folder %s (= %s) overlap; %s\n' \
        "$results_arg" "$real_results" "$input_arg" "$real_input" \
        "choose a results folder outside the input folder" >&2
    exit 1
fi
if ! mkdir -p "$results_arg/logs/cron" 2>/dev/null || [[ ! -w "$results_arg/logs/cron" ]]; then
    printf 'n2vpipe-cron: cannot create or write the results folder %s; %s\n' "$results_arg" \
        "fix its permissions or mount, or choose another" >&2
    exit 1
fi
results_dir="$(cd "$results_arg" && pwd)"
log_dir="$results_dir/logs/cron"

# ---------------------------------------------------------------- one run at a time
lock="$results_dir/.n2vpipe-cron.lock"
exec {lock_fd}>>"$lock"
if ! flock -n "$lock_fd"; then
    printf 'n2vpipe-cron: another run is still active (lock %s held); this one does nothing\n' "$lock"
    exit 0
fi
# A run started by hand or from another clone holds the pipeline's own results lock: leave the work to it.
results_lock="$results_dir/.n2vpipe.lock"
if [[ -e "$results_lock" ]] && ! flock -n -s "$results_lock" true; then
    printf 'n2vpipe-cron: another n2vpipe run holds %s (%s); this one does nothing\n' \
        "$results_dir" "$(tr -d '\n' <"$results_lock")"
    exit 0
fi

# ---------------------------------------------------------------- per-run log + settings
stamp="$(date +%Y%m%d-%H%M%S)-$$"
log="$log_dir/$stamp.log"
run_config="$log_dir/$stamp.config.yaml"
yaml_quote() {  # a YAML double-quoted scalar
    local s="${1//\\/\\\\}"
    printf '"%s"' "${s//\"/\\\"}"
}
{
    printf '# written by n2vpipe-cron.sh for the run logged in %s\n' "$(basename "$log")"
    printf 'input_dir: %s\n' "$(yaml_quote "$input_dir")"
    printf 'results_dir: %s\n' "$(yaml_quote "$results_dir")"
    printf 'arrival:\n  min_age_seconds: %s\n' "$min_age"
} >"$run_config"
ln -sfn "$(basename "$log")" "$log_dir/latest.log"

args=()
if [[ -n "${N2VPIPE_PROFILE-slurm}" ]]; then
    args+=(--profile "${N2VPIPE_PROFILE-slurm}")
else
    args+=(--cores "${N2VPIPE_CORES:-all}")
fi
configfiles=()
if [[ -n "$user_config" ]]; then configfiles+=("$user_config"); fi
configfiles+=("$run_config")
args+=(--keep-going --rerun-incomplete --configfile "${configfiles[@]}")

{
    printf 'n2vpipe-cron: run %s on %s, repository %s\n' "$stamp" "$(hostname)" "$repo"
    printf 'n2vpipe-cron: input %s, results %s, inputs taken when unchanged for %ss\n' \
        "$input_dir" "$results_dir" "$min_age"
    printf 'n2vpipe-cron: command: cd %q &&' "$repo"
    printf ' %q' "$snakemake_cmd" "${args[@]}" "$@"
    printf '\n'
} >"$log"

rc=0
started="$(date +%s)"
(cd "$repo" && exec "$snakemake_cmd" "${args[@]}" "$@") >>"$log" 2>&1 </dev/null || rc=$?
printf 'n2vpipe-cron: snakemake exit status %s\n' "$rc" >>"$log"

# ---------------------------------------------------------------- skipped inputs, reported once
reported="$log_dir/skipped-inputs.reported"
new_skips() {  # updates $reported; prints the skips it did not list yet
    # Snakemake logs "n2vpipe: PATH: skipped, REASON" for each input it leaves out, after a
    # "n2vpipe: discovery:" line; without that line (a run refused before discovery) this
    # run learnt nothing, and what was reported stays reported.
    grep -q '^n2vpipe: discovery: ' "$log" || return 0
    local current="$reported.$$.tmp"
    sed -n 's/^n2vpipe: \(.*: skipped, .*\)$/\1/p' "$log" | LC_ALL=C sort -u >"$current"
    if [[ -f "$reported" ]]; then
        LC_ALL=C comm -13 <(LC_ALL=C sort -u "$reported") "$current"
    else
        cat "$current"
    fi
    mv -f "$current" "$reported"  # atomic: a killed run leaves the old list or the new one
}
skips="$(new_skips)"
report_skips() {
    if [[ -n "$skips" ]]; then
        printf 'n2vpipe-cron: inputs skipped (reported once; rename, fix or remove them, see %s):\n' "$log"
        sed 's/^/  /' <<<"$skips"
    fi
}

# ---------------------------------------------------------------- run summary
summary_file="$log_dir/latest-summary.txt"
summary=""
if summary="$(PYTHONPATH="$repo/src${PYTHONPATH:+:$PYTHONPATH}" "$python_cmd" -m n2vpipe.run_summary \
    --results "$results_dir" --log "$log" --since "$started" --exit-status "$rc" \
    --output "$summary_file" 2>>"$log")"; then
    printf '%s\n' "$summary" >>"$log"
else
    printf 'n2vpipe-cron: could not write the run summary %s with %s (its error is above)\n' \
        "$summary_file" "$python_cmd" >>"$log"
    summary=""
fi

if ((log_days > 0)); then
    find "$log_dir" -maxdepth 1 -type f \( -name '*.log' -o -name '*.config.yaml' \) \
        -mtime +"$log_days" -delete 2>/dev/null || true
fi

if ((rc != 0)); then
    printf 'n2vpipe-cron: run FAILED (snakemake exit status %s)\n' "$rc"
    printf 'n2vpipe-cron: full log: %s\n' "$log"
    # The failed jobs with their log files (and each log's first error line),
    # SLURM's own log files, and the per-acquisition summary.
    errors="$(grep -E -A12 '^Error in rule' "$log" | grep -E '^Error in rule|^    (jobid|log):' || true)"
    if [[ -n "$errors" ]]; then printf '%s\n' "$errors"; fi
    while read -r job_log; do
        if [[ -f "$job_log" ]]; then
            first_error="$(grep -m1 -E 'ERROR|Error|error' "$job_log" || true)"
            if [[ -n "$first_error" ]]; then printf '  %s: %s\n' "$job_log" "$first_error"; fi
        fi
    done < <(sed -nE 's/^    log: ([^ ]+).*/\1/p' <<<"$errors" | sort -u)
    # The SLURM plugin deletes the logs of jobs that succeeded; those left are the failed ones.
    while read -r slurm_log; do
        if [[ -f "$slurm_log" ]]; then printf '  SLURM log: %s\n' "$slurm_log"; fi
    done < <(grep -oE '[^ (]*slurm_logs/[^ )]+\.log' "$log" | sort -u)
    grep -E '^n2vpipe: |^  [^ ]+: (logs in|not complete)' "$log" |
        grep -v -E '^n2vpipe: (.*: skipped, |discovery: )' || true
    report_skips
    if [[ -n "$summary" ]]; then printf 'n2vpipe-cron: run summary: %s\n' "$summary_file"; fi
    exit "$rc"
fi
report_skips
exit 0

#!/usr/bin/env bash
# Submits a jaxkd experiment as a multi-node GPU job on a SLURM cluster.
#
#   launch/slurm_gpu.sh --nodes 2 --gpus-per-node 8 [options] -- \
#       python -m experiments.kd --config configs/kd/<name>.py --workdir /shared/runs/NAME
#
# Writes an sbatch script (kept next to the logs, in runs/slurm/ by default) that runs one process
# per node with all of the node's GPUs visible, and submits it with sbatch. jax.distributed
# finds the coordinator, process count and process id from SLURM's variables. The job requeues
# itself: SIGTERM arrives 120 s before the time limit (or on preemption), is forwarded to the run
# (which saves a checkpoint), and the job goes back in the queue; the rerun resumes from the
# checkpoint in --workdir. --dry-run prints the script and the sbatch command and submits nothing.
# See launch/README.md.
set -euo pipefail

SBATCH=${SBATCH:-sbatch}
repo_root=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)

usage() {
  cat <<'EOF'
usage: launch/slurm_gpu.sh --nodes N --gpus-per-node G [options] -- COMMAND [ARG ...]

Writes and submits an sbatch script that runs COMMAND once per node (one JAX process per node,
all G GPUs of the node visible to it) with the repository's .venv activated, its arguments
exactly as given after `--`. The repository, the venv and COMMAND's --workdir must be on a
filesystem that every node sees. Re-running the same command resumes from the checkpoint.

required:
  --nodes N               number of nodes (= JAX processes)
  --gpus-per-node G       GPUs per node, all visible to the node's process

options:
  --partition P           SLURM partition
  --time T                time limit (default: 24:00:00)
  --account A             account to charge
  --job-name NAME         job name (default: jaxkd)
  --cpus-per-task C       CPU cores for each node's process (strongly advised: many clusters
                          default to 1, which starves the input pipeline)
  --mem M                 memory per node, e.g. 400G (default: the cluster's default)
  --save-time S           seconds between the SIGTERM and the time limit (default: 120)
  --sbatch-option OPT     extra sbatch option, e.g. --sbatch-option=--qos=high (repeatable)
  --log-dir DIR           where the script and logs go (default: runs/slurm in the repository)
  --venv DIR              virtual environment to activate (default: .venv in the repository)
  --dry-run               print the sbatch script and the sbatch command; submit nothing
  -h, --help              show this help

environment: SBATCH (default: sbatch) is the sbatch binary to call.
EOF
}

die() {
  echo "launch/slurm_gpu.sh: error: $*" >&2
  echo "run launch/slurm_gpu.sh --help for usage" >&2
  exit 2
}

# q WORD: WORD quoted for a POSIX shell: bare when it has no special characters, else in single
# quotes, or in double quotes when it holds single quotes but nothing special inside double quotes.
q() {
  local s=$1 sq="'\"'\"'"
  if [[ -n $s && $s =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$s"
  elif [[ $s == *\'* && $s != *[\"\$\`\\!]* ]]; then
    printf '"%s"' "$s"
  else
    printf "'%s'" "${s//\'/$sq}"
  fi
}

# qjoin WORD...: the words quoted and joined by spaces, i.e. a shell command line.
qjoin() {
  local out="" w
  for w in "$@"; do out+="${out:+ }$(q "$w")"; done
  printf '%s' "$out"
}

nodes="" gpus_per_node="" partition="" time_limit="24:00:00" account="" job_name="jaxkd"
cpus_per_task="" mem="" save_time=120 log_dir="$repo_root/runs/slurm" venv="$repo_root/.venv"
dry_run=0 extra=() command=()

# need OPTION NARGS_LEFT NEXT_ARG: fails unless OPTION is followed by a value (not an option).
need() { (( $2 >= 2 )) && [[ $3 != -* ]] || die "option $1 needs a value"; }
positive() { [[ $2 =~ ^[1-9][0-9]*$ ]] || die "$1 must be a positive integer, got '$2'"; }

while (( $# > 0 )); do
  case $1 in
    --nodes) need "$1" $# "${2:-}"; nodes=$2; shift 2 ;;
    --gpus-per-node) need "$1" $# "${2:-}"; gpus_per_node=$2; shift 2 ;;
    --partition) need "$1" $# "${2:-}"; partition=$2; shift 2 ;;
    --time) need "$1" $# "${2:-}"; time_limit=$2; shift 2 ;;
    --account) need "$1" $# "${2:-}"; account=$2; shift 2 ;;
    --job-name) need "$1" $# "${2:-}"; job_name=$2; shift 2 ;;
    --cpus-per-task) need "$1" $# "${2:-}"; cpus_per_task=$2; shift 2 ;;
    --mem) need "$1" $# "${2:-}"; mem=$2; shift 2 ;;
    --save-time) need "$1" $# "${2:-}"; save_time=$2; shift 2 ;;
    --sbatch-option) need "$1" $# x; extra+=("$2"); shift 2 ;;
    --log-dir) need "$1" $# "${2:-}"; log_dir=$2; shift 2 ;;
    --venv) need "$1" $# "${2:-}"; venv=$2; shift 2 ;;
    --nodes=*|--gpus-per-node=*|--partition=*|--time=*|--account=*|--job-name=*|\
    --cpus-per-task=*|--mem=*|--save-time=*|--sbatch-option=*|--log-dir=*|--venv=*)
      set -- "${1%%=*}" "${1#*=}" "${@:2}" ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; command=("$@"); break ;;
    *) die "unknown option '$1' (the experiment command goes after --)" ;;
  esac
done

[[ -n $nodes ]] || die "missing required option --nodes"
[[ -n $gpus_per_node ]] || die "missing required option --gpus-per-node"
(( ${#command[@]} > 0 )) || die "missing the experiment command after --"
positive --nodes "$nodes"
positive --gpus-per-node "$gpus_per_node"
positive --save-time "$save_time"
[[ -z $cpus_per_task ]] || positive --cpus-per-task "$cpus_per_task"
[[ $job_name =~ ^[A-Za-z0-9_.-]+$ ]] || die "--job-name may only use letters, digits and _.-"
[[ $log_dir == /* ]] || log_dir="$PWD/$log_dir"
[[ $venv == /* ]] || venv="$PWD/$venv"

device_ids=$(seq -s, 0 $(( gpus_per_node - 1 )))
srun_cmd=(srun --kill-on-bad-exit=1)
[[ -n $cpus_per_task ]] && srun_cmd+=(--cpus-per-task="$cpus_per_task")

sbatch_lines=(
  "--job-name=$job_name"
  "--nodes=$nodes"
  "--ntasks-per-node=1"
  "--gpus-per-node=$gpus_per_node"
  "--time=$time_limit"
)
[[ -n $partition ]] && sbatch_lines+=("--partition=$partition")
[[ -n $account ]] && sbatch_lines+=("--account=$account")
[[ -n $cpus_per_task ]] && sbatch_lines+=("--cpus-per-task=$cpus_per_task")
[[ -n $mem ]] && sbatch_lines+=("--mem=$mem")
sbatch_lines+=(
  "--output=$log_dir/%x-%j.out"
  "--open-mode=append"
  "--requeue"
  "--signal=B:TERM@$save_time"
)
sbatch_lines+=("${extra[@]}")

script_path="$log_dir/$job_name-$(date +%Y%m%d-%H%M%S).sbatch"

generate() {
  echo "#!/bin/bash"
  echo "# Written by launch/slurm_gpu.sh; submit again with: sbatch $(q "$script_path")"
  local line
  for line in "${sbatch_lines[@]}"; do
    [[ $line != *$'\n'* ]] || die "sbatch option '$line' contains a newline"
    echo "#SBATCH $line"
  done
  cat <<EOF
set -uo pipefail

cd $(q "$repo_root")
. $(q "$venv/bin/activate")
# Launcher-only variables must not leak in from the submitting shell.
unset JAXKD_COORDINATOR_ADDRESS JAXKD_NUM_PROCESSES JAXKD_PROCESS_ID JAXKD_LOCAL_DEVICE_COUNT
# One process per node: jax.distributed.initialize() takes the coordinator, process count and id
# from SLURM; by default it would show each process only GPU \$SLURM_LOCALID, so list them all.
export JAX_LOCAL_DEVICE_IDS=$device_ids
echo "jaxkd: job \${SLURM_JOB_ID} (restart \${SLURM_RESTART_COUNT:-0}) on \${SLURM_JOB_NODELIST}"

# SIGTERM comes $save_time s before the time limit (--signal=B:TERM@$save_time) or on preemption.
# Forward it to srun, which passes it to the run; the run saves a checkpoint and exits; then requeue
# so the job continues from that checkpoint.
term_received=0
srun_pid=""
on_term() {
  term_received=1
  echo "jaxkd: got SIGTERM; forwarding it to the run so it saves a checkpoint"
  if [ -n "\$srun_pid" ]; then kill -TERM "\$srun_pid" 2>/dev/null; fi
}
trap on_term TERM

$(qjoin "${srun_cmd[@]}") $(qjoin "${command[@]}") &
srun_pid=\$!
if [ "\$term_received" = 1 ]; then kill -TERM "\$srun_pid" 2>/dev/null; fi
wait "\$srun_pid"; status=\$?
# A trapped signal interrupts wait (status > 128) while srun may still run: wait for it to exit.
while [ "\$status" -gt 128 ] && kill -0 "\$srun_pid" 2>/dev/null; do
  wait "\$srun_pid"; status=\$?
done
if [ "\$status" -gt 128 ]; then  # Maybe still the interrupted wait's status: ask bash for srun's.
  wait "\$srun_pid" 2>/dev/null; again=\$?
  if [ "\$again" -ne 127 ]; then status=\$again; fi
fi
if [ "\$term_received" = 1 ]; then
  echo "jaxkd: run exited with status \$status after SIGTERM; requeueing job \$SLURM_JOB_ID"
  scontrol requeue "\$SLURM_JOB_ID" || true
fi
exit "\$status"
EOF
}

script=$(generate)
submit=("$SBATCH" "$script_path")
if (( dry_run )); then
  echo "# dry run: the sbatch script below would be written to $script_path"
  printf '%s\n' "$script"
  echo "# and submitted with:"
  qjoin "${submit[@]}"; echo
else
  mkdir -p -- "$log_dir"
  printf '%s\n' "$script" > "$script_path"
  echo "launch/slurm_gpu.sh: wrote $script_path; logs go to $log_dir/$job_name-JOBID.out" >&2
  echo "+ $(qjoin "${submit[@]}")" >&2
  "${submit[@]}"
fi

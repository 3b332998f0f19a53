#!/usr/bin/env bash
# Runs a jaxkd experiment on every worker of a Cloud TPU VM (single host or pod slice).
#
#   launch/tpu_vm.sh --name NAME --zone ZONE --accelerator-type v4-32 [options] -- \
#       python -m experiments.kd --config configs/kd/<name>.py --workdir gs://BUCKET/runs/NAME
#
# Steps: (1) create the TPU VM unless it exists (READY: reused; STOPPED: started; PREEMPTED or
# TERMINATED: deleted and re-created), (2) put the code on every worker (a tarball of --sync-dir,
# default this checkout, or a clone of --repo), (3) install it into .venv on every worker,
# (4) run the command on all workers at once with `gcloud ... ssh --worker=all`. On a pod each
# worker is one JAX process; jax.distributed.initialize() finds the others by itself.
# --dry-run prints these commands, shell-quoted, and runs nothing. See launch/README.md.
set -euo pipefail

GCLOUD=${GCLOUD:-gcloud}

usage() {
  cat <<'EOF'
usage: launch/tpu_vm.sh --name NAME --zone ZONE --accelerator-type TYPE [options] -- COMMAND...

Creates the Cloud TPU VM NAME if needed, puts this code on every worker, installs it into
~/REMOTE_DIR/.venv and runs COMMAND on all workers (one JAX process per worker). COMMAND runs in
REMOTE_DIR with the venv activated, its arguments exactly as given after `--`. Its --workdir must
be reachable from every worker with the same path: a gs:// path (recommended) or a shared disk.

required:
  --name NAME               TPU VM name
  --zone ZONE               e.g. us-central2-b
  --accelerator-type TYPE   e.g. v4-8 (one host), v4-32 (four hosts), v5litepod-16

options:
  --version V               TPU software version (default: tpu-ubuntu2204-base)
  --project P               GCP project (default: gcloud's configured project)
  --spot                    create a spot VM (re-run the same command after a preemption:
                            the VM is re-created and the run resumes from its checkpoint)
  --sync-dir DIR            copy DIR to the workers (default: this checkout; .git, .venv, runs/,
                            caches left out). Files deleted locally are not deleted remotely.
  --repo URL                instead of copying, git clone URL on the workers (or pull if present)
  --ref REF                 with --repo: git checkout --detach REF after fetching
                            (a commit, a tag, origin/BRANCH)
  --remote-dir DIR          code directory on the workers, relative to home (default: jaxkd)
  --python PY               interpreter that creates the venv (default: python3). jaxkd needs
                            Python >= 3.11; the TPU images ship 3.10, so pass --python python3.11
                            with --setup 'sudo apt-get update && sudo apt-get install -y
                            python3.11-venv' (see launch/README.md)
  --setup CMD               shell command run on every worker before installing (e.g. apt-get)
  --detach                  start COMMAND under nohup and return; output goes to
                            REMOTE_DIR/logs/NAME-TIMESTAMP.log on each worker
  --dry-run                 print the commands (one per line, copy-pasteable); run nothing
  -h, --help                show this help

environment: GCLOUD (default: gcloud) is the gcloud binary to call.
EOF
}

die() {
  echo "launch/tpu_vm.sh: error: $*" >&2
  echo "run launch/tpu_vm.sh --help for usage" >&2
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

name="" zone="" accelerator_type="" version="tpu-ubuntu2204-base" project="" spot=0
sync_dir="" repo="" ref="" remote_dir="jaxkd" python="python3" setup="" detach=0 dry_run=0
command=()

# need OPTION NARGS_LEFT NEXT_ARG: fails unless OPTION is followed by a value (not an option).
need() { (( $2 >= 2 )) && [[ $3 != -* ]] || die "option $1 needs a value"; }

while (( $# > 0 )); do
  case $1 in
    --name) need "$1" $# "${2:-}"; name=$2; shift 2 ;;
    --zone) need "$1" $# "${2:-}"; zone=$2; shift 2 ;;
    --accelerator-type) need "$1" $# "${2:-}"; accelerator_type=$2; shift 2 ;;
    --version) need "$1" $# "${2:-}"; version=$2; shift 2 ;;
    --project) need "$1" $# "${2:-}"; project=$2; shift 2 ;;
    --sync-dir) need "$1" $# "${2:-}"; sync_dir=$2; shift 2 ;;
    --repo) need "$1" $# "${2:-}"; repo=$2; shift 2 ;;
    --ref) need "$1" $# "${2:-}"; ref=$2; shift 2 ;;
    --remote-dir) need "$1" $# "${2:-}"; remote_dir=$2; shift 2 ;;
    --python) need "$1" $# "${2:-}"; python=$2; shift 2 ;;
    --setup) need "$1" $# "${2:-}"; setup=$2; shift 2 ;;
    --name=*|--zone=*|--accelerator-type=*|--version=*|--project=*|--sync-dir=*|--repo=*|--ref=*|\
    --remote-dir=*|--python=*|--setup=*)
      set -- "${1%%=*}" "${1#*=}" "${@:2}" ;;
    --spot) spot=1; shift ;;
    --detach) detach=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; command=("$@"); break ;;
    *) die "unknown option '$1' (the experiment command goes after --)" ;;
  esac
done

[[ -n $name ]] || die "missing required option --name"
[[ -n $zone ]] || die "missing required option --zone"
[[ -n $accelerator_type ]] || die "missing required option --accelerator-type"
(( ${#command[@]} > 0 )) || die "missing the experiment command after --"
[[ -n $repo && -n $sync_dir ]] && die "give --repo or --sync-dir, not both"
[[ -n $ref && -z $repo ]] && die "--ref needs --repo"
[[ $remote_dir != /* && $remote_dir != *..* && -n $remote_dir ]] \
  || die "--remote-dir must be a path relative to the home directory"
if [[ -z $repo ]]; then
  sync_dir=${sync_dir:-$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)}
  [[ -d $sync_dir ]] || die "--sync-dir $sync_dir is not a directory"
fi

tpu=("$GCLOUD" compute tpus tpu-vm)
where=(--zone="$zone")
[[ -n $project ]] && where+=(--project="$project")

# run CMD...: prints CMD (dry run) or echoes it to stderr and runs it.
run() {
  if (( dry_run )); then
    qjoin "$@"; echo
  else
    echo "+ $(qjoin "$@")" >&2
    "$@"
  fi
}
note() {
  if (( dry_run )); then echo "# $*"; else echo "launch/tpu_vm.sh: $*" >&2; fi
}
# on_all_workers SHELL_COMMAND: runs SHELL_COMMAND on every worker.
on_all_workers() { run "${tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command "$1"; }

# The workdir must be one path for all workers; warn when it looks host-local.
for (( i = 0; i < ${#command[@]}; i++ )); do
  workdir=""
  case ${command[i]} in
    --workdir=*) workdir=${command[i]#--workdir=} ;;
    --workdir) workdir=${command[i+1]:-} ;;
  esac
  if [[ -n $workdir && $workdir != gs://* ]]; then
    note "warning: --workdir $workdir is not a gs:// path; on a multi-host slice it must be a" \
      "disk shared by all workers, or each worker writes its own partial checkpoints"
  fi
done

# 1. The TPU VM.
create=("${tpu[@]}" create "$name" "${where[@]}" --accelerator-type="$accelerator_type"
  --version="$version")
(( spot )) && create+=(--spot)
describe=("${tpu[@]}" describe "$name" "${where[@]}" --format='value(state)')
if (( dry_run )); then
  note "dry run: not checking whether TPU VM $name exists ($(qjoin "${describe[@]}"));" \
    "assuming it must be created"
  run "${create[@]}"
else
  echo "+ $(qjoin "${describe[@]}")" >&2
  state=$("${describe[@]}" 2>/dev/null) || state=""
  case $state in
    "") note "TPU VM $name not found; creating it"; run "${create[@]}" ;;
    READY) note "TPU VM $name exists and is READY; reusing it" ;;
    STOPPED) run "${tpu[@]}" start "$name" "${where[@]}" ;;
    PREEMPTED|TERMINATED)
      note "TPU VM $name is $state; deleting and re-creating it"
      run "${tpu[@]}" delete "$name" "${where[@]}" --quiet
      run "${create[@]}" ;;
    *) die "TPU VM $name is in state $state; re-run when it is READY" ;;
  esac
fi

# 2. The code, on every worker.
rdir=$(q "$remote_dir")
if [[ -n $repo ]]; then
  get_code="if [ -d $rdir/.git ]; then git -C $rdir"
  if [[ -n $ref ]]; then
    get_code+=" fetch --tags origin; else git clone $(q "$repo") $rdir; fi"
    get_code+=" && git -C $rdir checkout --detach $(q "$ref")"
  else
    get_code+=" pull --ff-only; else git clone $(q "$repo") $rdir; fi"
  fi
  on_all_workers "$get_code"
else
  tarball="${TMPDIR:-/tmp}/jaxkd-$name.tar.gz"
  run tar -C "$sync_dir" --exclude=./.git --exclude=./.venv --exclude=./runs \
    --exclude=__pycache__ --exclude=.pytest_cache --exclude='*.egg-info' -czf "$tarball" .
  run "${tpu[@]}" scp "$tarball" "$name:jaxkd-code.tar.gz" "${where[@]}" --worker=all
  on_all_workers "mkdir -p $rdir && tar -xzf jaxkd-code.tar.gz -C $rdir && rm jaxkd-code.tar.gz"
fi

# 3. Install into a venv on every worker (idempotent: re-running only updates).
[[ -z $setup ]] || on_all_workers "$setup"
py=$(q "$python")
on_all_workers "cd $rdir && { $py -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||\
 { echo 'jaxkd needs Python >= 3.11: see --python in launch/tpu_vm.sh --help' >&2; exit 1; }; }\
 && $py -m venv .venv && .venv/bin/pip install -e '.[tpu]'"

# 4. Run the experiment on all workers at once.
experiment=$(qjoin "${command[@]}")
if (( detach )); then
  log="logs/$name-$(date +%Y%m%d-%H%M%S).log"
  on_all_workers "cd $rdir && . .venv/bin/activate && mkdir -p logs &&\
 nohup $experiment > $(q "$log") 2>&1 < /dev/null &"
  note "started; output on each worker in ~/$remote_dir/$log"
else
  on_all_workers "cd $rdir && . .venv/bin/activate && $experiment"
fi

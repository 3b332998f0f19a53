"""Tests for launch/: the local multi-process launcher, the TPU VM and the SLURM scripts.

The remote scripts run against fake ``gcloud``/``sbatch``/``srun``/``scontrol`` executables put
first on PATH; they record their arguments, so the tests can check both that a dry run calls
nothing and that a real run calls the expected sequence. Quoting is checked end to end: the
experiment command that finally reaches a (fake) ``python`` must equal the one given after ``--``.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LOCAL = REPO / "launch" / "local.sh"
TPU_VM = REPO / "launch" / "tpu_vm.sh"
SLURM = REPO / "launch" / "slurm_gpu.sh"

# An experiment command whose arguments need every kind of shell quoting.
TRICKY = [
    "python",
    "-m",
    "experiments.kd",
    "--config",
    "configs/kd/example.py:smoke",
    "--workdir",
    "gs://bucket/runs/a b",
    "--config.name=a b",
    "--config.note=it's \"quoted\" $HOME `x` \\ !",
    "",
]

# A fake command: appends {"argv": [...], "cwd": ...} to $FAKE_LOG; prints $FAKE_STDOUT; exits
# with $FAKE_EXIT (default 0). The fake gcloud answers `describe` with $FAKE_TPU_STATE, or fails
# like a missing VM when that is empty.
_FAKE = """\
#!{python}
import json, os, sys
name = os.path.basename(sys.argv[0])
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps({{"prog": name, "argv": sys.argv[1:], "cwd": os.getcwd()}}) + "\\n")
if name == "gcloud" and "describe" in sys.argv:
    state = os.environ.get("FAKE_TPU_STATE", "")
    if not state:
        sys.exit("ERROR: (gcloud.compute.tpus.tpu-vm.describe) NOT_FOUND")
    print(state)
if name == "sbatch":
    with open(os.environ["FAKE_LOG"] + ".script", "w") as f:
        f.write(open(sys.argv[-1]).read())
    print("Submitted batch job 42")
"""


@pytest.fixture
def fake_env(tmp_path):
    """An environment whose PATH starts with fake gcloud/sbatch that log their calls."""
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    for name in ("gcloud", "sbatch"):
        path = bin_dir / name
        path.write_text(_FAKE.format(python=sys.executable))
        path.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("GCLOUD", "SBATCH")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    env["FAKE_LOG"] = str(tmp_path / "calls.jsonl")
    env["TMPDIR"] = str(tmp_path)
    # Never reach a real gcloud/sbatch (this machine may have a real gcloud installed).
    assert shutil.which("gcloud", path=env["PATH"]) == str(bin_dir / "gcloud")
    assert shutil.which("sbatch", path=env["PATH"]) == str(bin_dir / "sbatch")
    return env


def _calls(env) -> list[dict]:
    log = Path(env["FAKE_LOG"])
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def _run(args, env, timeout=60) -> subprocess.CompletedProcess:
    """Runs a launcher; on a timeout sends it SIGTERM first so that it stops its processes."""
    args = [str(a) for a in args]
    with subprocess.Popen(args, env=env, cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.communicate(timeout=10)
            finally:
                proc.kill()
            raise
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def _commands(stdout: str) -> list[list[str]]:
    """The non-comment lines of a dry run, each split as a POSIX shell would."""
    return [shlex.split(line) for line in stdout.splitlines() if line and not line.startswith("#")]


def _ssh_command(argv: list[str]) -> str:
    """The --command value of a `gcloud compute tpus tpu-vm ssh` argv."""
    i = argv.index("--command")
    return argv[i + 1]


# ---------------------------------------------------------------------------------------------
# Required options and --help, all three launchers.

_TPU_OK = ["--name", "n", "--zone", "z", "--accelerator-type", "v4-8"]
_SLURM_OK = ["--nodes", "2", "--gpus-per-node", "8"]


@pytest.mark.parametrize(
    "script, args, missing",
    [
        (TPU_VM, _TPU_OK[2:], "--name"),
        (TPU_VM, _TPU_OK[:2] + _TPU_OK[4:], "--zone"),
        (TPU_VM, _TPU_OK[:4], "--accelerator-type"),
        (TPU_VM, _TPU_OK + ["--zone"], "--zone"),  # Option without its value.
        (SLURM, _SLURM_OK[2:], "--nodes"),
        (SLURM, _SLURM_OK[:2], "--gpus-per-node"),
        (LOCAL, [], "--num-processes"),
    ],
)
def test_missing_required_option_is_named(script, args, missing, fake_env):
    fake_env["PYTHON"] = sys.executable
    result = _run(["bash", script, *args, "--dry-run", "--", "python", "-c", "pass"], fake_env)
    assert result.returncode != 0
    assert missing in result.stderr
    assert _calls(fake_env) == []


@pytest.mark.parametrize(
    "script, args", [(TPU_VM, _TPU_OK), (SLURM, _SLURM_OK), (LOCAL, ["-n", "2"])]
)
def test_missing_command_after_double_dash(script, args, fake_env):
    fake_env["PYTHON"] = sys.executable
    result = _run(["bash", script, *args, "--dry-run"], fake_env)
    assert result.returncode != 0
    assert "--" in result.stderr and "command" in result.stderr.lower()


@pytest.mark.parametrize("script", [TPU_VM, SLURM, LOCAL])
def test_help(script, fake_env):
    fake_env["PYTHON"] = sys.executable
    result = _run(["bash", script, "--help"], fake_env)
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout
    assert _calls(fake_env) == []


# ---------------------------------------------------------------------------------------------
# TPU VM.


def test_tpu_vm_dry_run_prints_commands_and_runs_nothing(fake_env):
    result = _run(
        ["bash", TPU_VM, "--name", "kd-pod", "--zone", "us-central2-b", "--accelerator-type",
         "v4-32", "--project", "my-proj", "--spot", "--dry-run", "--", *TRICKY],
        fake_env,
    )
    assert result.returncode == 0, result.stderr
    assert _calls(fake_env) == [], "a dry run must not call gcloud"
    comments = [line for line in result.stdout.splitlines() if line.startswith("#")]
    assert any("assuming it must be created" in line for line in comments)

    cmds = _commands(result.stdout)
    where = ["--zone=us-central2-b", "--project=my-proj"]
    assert cmds[0] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "kd-pod", *where,
                       "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base", "--spot"]
    assert cmds[1][0] == "tar"
    assert cmds[2][:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]
    assert "--worker=all" in cmds[2]
    ssh = [c for c in cmds if c[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]]
    assert len(ssh) == 3  # Unpack, install, run.
    for c in ssh:
        assert c[5] == "kd-pod" and "--worker=all" in c and all(w in c for w in where)
        syntax = subprocess.run(["bash", "-n", "-c", _ssh_command(c)], capture_output=True)
        assert syntax.returncode == 0, (_ssh_command(c), syntax.stderr)
    assert ("python3 -m venv .venv && .venv/bin/pip install -e '.[tpu]'"
            in _ssh_command(ssh[1]))
    remote = shlex.split(_ssh_command(ssh[2]))
    assert remote[-len(TRICKY):] == TRICKY
    assert cmds[-1] == ssh[2]


def test_tpu_vm_dry_run_with_repo_clones_on_all_workers(fake_env):
    result = _run(
        ["bash", TPU_VM, "--name=n", "--zone=z", "--accelerator-type=v4-8",
         "--repo", "https://example.com/jaxkd.git", "--ref", "origin/main",
         "--python", "python3.11", "--setup", "sudo apt-get install -y python3.11-venv",
         "--dry-run", "--", "python", "-m", "experiments.kd", "--workdir", "/local/dir"],
        fake_env,
    )
    assert result.returncode == 0, result.stderr
    assert _calls(fake_env) == []
    assert "# warning: --workdir /local/dir is not a gs:// path" in result.stdout
    cmds = _commands(result.stdout)
    assert not any(c[0] == "tar" or "scp" in c for c in cmds)
    clone = _ssh_command(cmds[1])
    assert "git clone https://example.com/jaxkd.git jaxkd" in clone
    assert "git -C jaxkd checkout --detach origin/main" in clone
    assert _ssh_command(cmds[2]) == "sudo apt-get install -y python3.11-venv"
    assert "python3.11 -m venv .venv && .venv/bin/pip install -e '.[tpu]'" in _ssh_command(cmds[3])
    assert cmds[0][4:6] == ["create", "n"] and "--zone=z" in cmds[0]


def _fake_worker_home(home: Path, argv_log: Path) -> None:
    """A home directory whose ~/jaxkd/.venv has an `activate` and a `python` recording argv."""
    bin_dir = home / "jaxkd" / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "activate").write_text(f'PATH="{bin_dir}:$PATH"; export PATH\n')
    python = bin_dir / "python"
    python.write_text(
        f"#!{sys.executable}\nimport json, sys\n"
        f"open({str(argv_log)!r}, 'w').write(json.dumps(sys.argv[1:]))\n"
    )
    python.chmod(0o755)


def test_tpu_vm_creates_syncs_installs_and_runs(fake_env, tmp_path):
    code = tmp_path / "code"
    (code / "jaxkd").mkdir(parents=True)
    (code / "jaxkd" / "x.py").write_text("x = 1\n")
    (code / ".venv").mkdir()
    (code / ".venv" / "big").write_text("not shipped\n")
    result = _run(
        ["bash", TPU_VM, "--name", "kd-pod", "--zone", "z1", "--accelerator-type", "v4-32",
         "--sync-dir", code, "--", *TRICKY],
        fake_env,
    )
    assert result.returncode == 0, result.stderr
    calls = [c["argv"] for c in _calls(fake_env)]
    assert [c[3] for c in calls] == ["describe", "create", "scp", "ssh", "ssh", "ssh"]
    assert calls[1] == ["compute", "tpus", "tpu-vm", "create", "kd-pod", "--zone=z1",
                        "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base"]
    assert all("--worker=all" in c for c in calls[2:])

    tarball = Path(calls[2][4])
    with tarfile.open(tarball) as tar:
        names = tar.getnames()
    assert "./jaxkd/x.py" in names and not any(".venv" in n for n in names)

    # The run command, executed by a shell the way sshd would, hands python the exact argv.
    home = tmp_path / "home"
    argv_log = tmp_path / "python_argv.json"
    _fake_worker_home(home, argv_log)
    remote = _ssh_command(calls[-1])
    run = subprocess.run(["bash", "-c", remote], cwd=home, env={**fake_env, "HOME": str(home)},
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    assert json.loads(argv_log.read_text()) == TRICKY[1:]


@pytest.mark.parametrize(
    "state, expected",
    [
        ("READY", ["describe", "ssh", "ssh", "ssh"]),
        ("STOPPED", ["describe", "start", "ssh", "ssh", "ssh"]),
        ("PREEMPTED", ["describe", "delete", "create", "ssh", "ssh", "ssh"]),
    ],
)
def test_tpu_vm_reuses_or_recreates_existing_vm(state, expected, fake_env):
    fake_env["FAKE_TPU_STATE"] = state
    result = _run(
        ["bash", TPU_VM, *_TPU_OK, "--repo", "https://example.com/jaxkd.git", "--",
         "python", "-c", "pass"],
        fake_env,
    )
    assert result.returncode == 0, result.stderr
    assert [c["argv"][3] for c in _calls(fake_env)] == expected


def test_tpu_vm_refuses_a_vm_in_transition(fake_env):
    fake_env["FAKE_TPU_STATE"] = "CREATING"
    result = _run(["bash", TPU_VM, *_TPU_OK, "--", "python", "-c", "pass"], fake_env)
    assert result.returncode != 0 and "CREATING" in result.stderr
    assert [c["argv"][3] for c in _calls(fake_env)] == ["describe"]


# ---------------------------------------------------------------------------------------------
# SLURM.


def _script_and_submit(stdout: str) -> tuple[str, list[str]]:
    lines = stdout.splitlines()
    start = lines.index("#!/bin/bash")
    end = lines.index("# and submitted with:")
    return "\n".join(lines[start:end]) + "\n", shlex.split(lines[end + 1])


def _srun_argv(script: str) -> list[str]:
    (line,) = [l for l in script.splitlines() if l.startswith("srun ")]
    argv = shlex.split(line)
    assert argv[-1] == "&"
    return argv[:-1]


def test_slurm_dry_run_prints_script_and_submits_nothing(fake_env, tmp_path):
    result = _run(
        ["bash", SLURM, "--nodes", "2", "--gpus-per-node", "8", "--partition", "gpu",
         "--account", "proj", "--time", "12:00:00", "--cpus-per-task", "32",
         "--log-dir", tmp_path / "logs", "--dry-run", "--", *TRICKY],
        fake_env,
    )
    assert result.returncode == 0, result.stderr
    assert _calls(fake_env) == [], "a dry run must not call sbatch"
    assert not (tmp_path / "logs").exists()
    script, submit = _script_and_submit(result.stdout)
    directives = [l for l in script.splitlines() if l.startswith("#SBATCH ")]
    for expected in ("--nodes=2", "--gpus-per-node=8", "--ntasks-per-node=1", "--partition=gpu",
                     "--account=proj", "--time=12:00:00", "--cpus-per-task=32", "--requeue",
                     "--signal=B:TERM@120", "--open-mode=append"):
        assert f"#SBATCH {expected}" in directives
    assert "export JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7" in script
    assert f". {REPO}/.venv/bin/activate" in script
    srun = _srun_argv(script)
    assert srun[0] == "srun" and srun[-len(TRICKY):] == TRICKY
    assert submit[0] == "sbatch" and submit[1].startswith(str(tmp_path / "logs"))
    syntax = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr


def _fake_cluster(tmp_path: Path, env: dict, srun_body: str) -> None:
    """Fake srun/scontrol on PATH and a fake venv; srun records its argv to srun_argv.json."""
    bin_dir = tmp_path / "fakebin"
    srun = bin_dir / "srun"
    srun.write_text(textwrap.dedent(f"""\
        #!/usr/bin/env bash
        printf '%s\\0' "$@" > {tmp_path}/srun_argv
        {srun_body}
    """))
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/usr/bin/env bash\necho "$@" >> {tmp_path}/scontrol_calls\n')
    for p in (srun, scontrol):
        p.chmod(0o755)
    venv = tmp_path / "venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "activate").write_text("VIRTUAL_ENV=fake\n")
    env.update(SLURM_JOB_ID="42", SLURM_JOB_NODELIST="node[1-2]")


def _submit(tmp_path, env) -> Path:
    result = _run(
        ["bash", SLURM, "--nodes", "2", "--gpus-per-node", "4", "--log-dir", tmp_path / "logs",
         "--venv", tmp_path / "venv", "--", *TRICKY],
        env,
    )
    assert result.returncode == 0, result.stderr
    (call,) = _calls(env)
    assert call["prog"] == "sbatch"
    path = Path(call["argv"][-1])
    assert path.parent == tmp_path / "logs"
    assert Path(env["FAKE_LOG"] + ".script").read_text() == path.read_text()
    return path


def test_slurm_script_runs_the_command_and_propagates_failure(fake_env, tmp_path):
    _fake_cluster(tmp_path, fake_env, "exit 3")
    script = _submit(tmp_path, fake_env)
    run = subprocess.run(["bash", script], env=fake_env, capture_output=True, text=True, timeout=30)
    assert run.returncode == 3
    argv = (tmp_path / "srun_argv").read_bytes().decode().split("\0")[:-1]
    assert argv[-len(TRICKY):] == TRICKY
    assert not (tmp_path / "scontrol_calls").exists()


def test_slurm_script_forwards_sigterm_and_requeues(fake_env, tmp_path):
    # The fake run saves on SIGTERM (takes 0.5 s) and exits 0.
    body = f"""trap 'sleep 0.5; echo saved > {tmp_path}/saved; exit 0' TERM
        touch {tmp_path}/started
        while true; do sleep 0.1; done"""
    _fake_cluster(tmp_path, fake_env, body)
    script = _submit(tmp_path, fake_env)
    proc = subprocess.Popen(["bash", script], env=fake_env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 20
        while not (tmp_path / "started").exists():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)  # What --signal=B:TERM@120 does: the batch shell only.
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert (tmp_path / "saved").read_text() == "saved\n"
    assert (tmp_path / "scontrol_calls").read_text() == "requeue 42\n"


# ---------------------------------------------------------------------------------------------
# Local multi-process launcher.


def _local_env() -> dict:
    env = dict(os.environ, PYTHON=sys.executable)
    env.pop("JAX_PLATFORMS", None)
    return env


def _prefixed(text: str, tag: str) -> dict[int, list[str]]:
    """{process id: [lines after `[p{i}] <tag>`]}."""
    out: dict[int, list[str]] = {}
    for line in text.splitlines():
        if line.startswith("[p") and "] " in line:
            pid, rest = line[2:].split("] ", 1)
            if rest.startswith(tag):
                out.setdefault(int(pid), []).append(rest[len(tag):])
    return out


def test_local_sets_env_and_prefixes_output():
    code = (
        "import json, os, sys\n"
        "print('ENV', json.dumps({k: v for k, v in os.environ.items()"
        " if k.startswith(('JAX', 'XLA'))}))\n"
        "print('ERR', os.environ['JAXKD_PROCESS_ID'], file=sys.stderr)\n"
        "print('no newline at end', end='')\n"
    )
    result = _run(["bash", LOCAL, "-n", "2", "--devices-per-process", "3", "--",
                   sys.executable, "-c", code], _local_env())
    assert result.returncode == 0, result.stderr
    envs = {i: json.loads(v[0]) for i, v in _prefixed(result.stdout, "ENV ").items()}
    assert sorted(envs) == [0, 1]
    for i, env in envs.items():
        assert env["JAXKD_PROCESS_ID"] == str(i)
        assert env["JAXKD_NUM_PROCESSES"] == "2"
        assert env["JAXKD_LOCAL_DEVICE_COUNT"] == "3"
        assert env["JAX_PLATFORMS"] == "cpu"
        # conftest's 8-device flag must not override --devices-per-process.
        assert "xla_force_host_platform_device_count" not in env.get("XLA_FLAGS", "")
    assert envs[0]["JAXKD_COORDINATOR_ADDRESS"] == envs[1]["JAXKD_COORDINATOR_ADDRESS"]
    assert envs[0]["JAXKD_COORDINATOR_ADDRESS"].startswith("127.0.0.1:")
    assert _prefixed(result.stderr, "ERR ") == {0: ["0"], 1: ["1"]}
    assert sorted(_prefixed(result.stdout, "no newline")) == [0, 1]


def test_local_dry_run_and_fixed_port():
    result = _run(["bash", LOCAL, "-n", "2", "--port", "12345", "--dry-run", "--", *TRICKY],
                  _local_env())
    assert result.returncode == 0, result.stderr
    lines = [shlex.split(line) for line in result.stdout.splitlines()]
    assert len(lines) == 2
    for i, argv in enumerate(lines):
        assert f"JAXKD_PROCESS_ID={i}" in argv
        assert "JAXKD_COORDINATOR_ADDRESS=127.0.0.1:12345" in argv
        assert argv[-len(TRICKY):] == TRICKY


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def _wait_dead(pids, timeout=5.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if _alive(p)]


def test_local_failure_stops_the_others_and_names_the_process(tmp_path):
    # Process 1 fails at once; process 0 (and a grandchild it started) would run for a minute.
    code = textwrap.dedent(f"""\
        import os, subprocess, sys, time
        i = os.environ["JAXKD_PROCESS_ID"]
        child = subprocess.Popen(["sleep", "60"])
        open(r"{tmp_path}/tmp" + i, "w").write(f"{{os.getpid()}} {{child.pid}}")
        os.replace(r"{tmp_path}/tmp" + i, r"{tmp_path}/pids" + i)  # Atomic: never seen empty.
        if i == "1":
            while not os.path.exists(r"{tmp_path}/pids0"):
                time.sleep(0.01)
            sys.exit(3)
        time.sleep(60)
    """)
    start = time.monotonic()
    result = _run(["bash", LOCAL, "-n", "2", "--", sys.executable, "-c", code], _local_env())
    assert time.monotonic() - start < 10  # Well under the launcher's 30 s SIGKILL timeout.
    assert result.returncode == 3
    assert "process 1 exited with code 3" in result.stderr
    pids = [int(p) for i in (0, 1) for p in (tmp_path / f"pids{i}").read_text().split()]
    assert _wait_dead(pids) == [], "orphaned processes left behind"


def test_local_forwards_sigterm_to_every_process(tmp_path):
    code = textwrap.dedent(f"""\
        import os, signal, sys, time
        def on_term(signum, frame):
            print("saving", flush=True)
            sys.exit(0)
        signal.signal(signal.SIGTERM, on_term)
        i = os.environ["JAXKD_PROCESS_ID"]
        open(r"{tmp_path}/tmp" + i, "w").write(str(os.getpid()))
        os.replace(r"{tmp_path}/tmp" + i, r"{tmp_path}/pid" + i)  # Atomic: never seen empty.
        time.sleep(60)
    """)
    proc = subprocess.Popen(["bash", LOCAL, "-n", "2", "--", sys.executable, "-c", code],
                            env=_local_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 20
        while not all((tmp_path / f"pid{i}").exists() for i in (0, 1)):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert _prefixed(out, "saving") == {0: [""], 1: [""]}
    pids = [int((tmp_path / f"pid{i}").read_text()) for i in (0, 1)]
    assert _wait_dead(pids) == []


def test_local_processes_die_with_a_killed_launcher(tmp_path):
    code = textwrap.dedent(f"""\
        import os, time
        i = os.environ["JAXKD_PROCESS_ID"]
        open(r"{tmp_path}/tmp" + i, "w").write(str(os.getpid()))
        os.replace(r"{tmp_path}/tmp" + i, r"{tmp_path}/pid" + i)  # Atomic: never seen empty.
        time.sleep(60)
    """)
    proc = subprocess.Popen(["bash", LOCAL, "-n", "2", "--", sys.executable, "-c", code],
                            env=_local_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not all((tmp_path / f"pid{i}").exists() for i in (0, 1)):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        proc.kill()  # SIGKILL: the launcher cannot forward anything.
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    pids = [int((tmp_path / f"pid{i}").read_text()) for i in (0, 1)]
    assert _wait_dead(pids) == []


_DISTRIBUTED_SMOKE = """\
import os
os.environ["XLA_FLAGS"] = (
    f"--xla_force_host_platform_device_count={os.environ['JAXKD_LOCAL_DEVICE_COUNT']}")
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

jax.distributed.initialize(
    coordinator_address=os.environ["JAXKD_COORDINATOR_ADDRESS"],
    num_processes=int(os.environ["JAXKD_NUM_PROCESSES"]),
    process_id=int(os.environ["JAXKD_PROCESS_ID"]),
)
i = jax.process_index()
gathered = multihost_utils.process_allgather(np.array([10.0 * (i + 1)]))
mesh = jax.make_mesh((jax.device_count(),), ("d",), axis_types=(jax.sharding.AxisType.Auto,))
local = np.arange(jax.local_device_count(), dtype=np.float32) + 100 * i
x = multihost_utils.host_local_array_to_global_array(local, mesh, P("d"))
total = jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, P()))(x)
print("RESULT", jax.config.jax_cpu_collectives_implementation, jax.process_count(),
      jax.device_count(), gathered.ravel().tolist(), float(total), flush=True)
"""


@pytest.mark.slow
def test_local_two_process_jax_distributed_smoke():
    start = time.monotonic()
    result = _run(["bash", LOCAL, "-n", "2", "--devices-per-process", "2", "--",
                   sys.executable, "-c", _DISTRIBUTED_SMOKE], _local_env())
    assert result.returncode == 0, result.stdout + result.stderr
    results = _prefixed(result.stdout, "RESULT ")
    assert sorted(results) == [0, 1]
    # Process 0 holds [0, 1], process 1 holds [100, 101]: the global sum is 202 on both.
    expected = "gloo 2 4 [10.0, 20.0] 202.0"
    assert results == {0: [expected], 1: [expected]}
    assert time.monotonic() - start < 60


_MAYBE_INITIALIZE = """\
from jaxkd.core import distributed
assert distributed.maybe_initialize()
import jax
print("RESULT", jax.process_index(), jax.process_count(), jax.local_device_count(),
      jax.device_count(), flush=True)
"""


@pytest.mark.slow
def test_local_launcher_drives_jaxkd_distributed():
    """The launcher's environment is what jaxkd.core.distributed.maybe_initialize expects."""
    result = _run(["bash", LOCAL, "-n", "2", "--devices-per-process", "3", "--",
                   sys.executable, "-c", _MAYBE_INITIALIZE], _local_env())
    assert result.returncode == 0, result.stdout + result.stderr
    assert _prefixed(result.stdout, "RESULT ") == {0: ["0 2 3 6"], 1: ["1 2 3 6"]}

#!/usr/bin/env python3
"""Run N copies of a command on this machine as one multi-process JAX job.

    launch/local.sh -n 2 -- python -m experiments.kd \\
        --config configs/kd/<name>.py:smoke --workdir runs/kd_2proc

Process ``i`` gets, on top of the launcher's environment, what ``jaxkd.core.distributed`` reads:

    JAXKD_COORDINATOR_ADDRESS=127.0.0.1:PORT   (PORT: --port, else a free one)
    JAXKD_NUM_PROCESSES=N
    JAXKD_PROCESS_ID=i
    JAXKD_LOCAL_DEVICE_COUNT=K                 (--devices-per-process, default 1)
    JAX_PLATFORMS=cpu                          (only if not already set)

An inherited ``--xla_force_host_platform_device_count`` is removed from ``XLA_FLAGS`` so that
``JAXKD_LOCAL_DEVICE_COUNT`` decides the device count.

Each output line of process ``i`` is prefixed with ``[p{i}] `` (stdout to stdout, stderr to
stderr). The launcher waits for all processes. When one exits non-zero it sends SIGTERM to the
others (SIGKILL after --kill-timeout seconds), names the failing process and its exit code on
stderr, and exits with that code. SIGINT/SIGTERM/SIGHUP sent to the launcher are forwarded to every
process (a second one kills them). Each process leads its own process group, and whatever is left
in a group when its leader exits is killed, so nothing outlives the launcher; on Linux the processes
also get SIGTERM if the launcher itself is killed with SIGKILL. Standard library only.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time

_TAG = "launch/local"
# Split after "\n", or after a lone "\r" (progress bars redraw their line with "\r").
_LINE_END = re.compile(rb"(?<=\n)|(?<=\r)(?!\n)")
_DEVICE_COUNT_FLAG = re.compile(r"--xla_force_host_platform_device_count=\S*")
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _log(msg: str) -> None:
    print(f"{_TAG}: {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Splits ``argv`` at the first ``--`` into launcher options and the command (kept verbatim)."""
    parser = argparse.ArgumentParser(
        prog="launch/local.sh",
        usage="%(prog)s -n N [--port P] [--devices-per-process K] [--kill-timeout S] [--dry-run]"
        " -- COMMAND [ARG ...]",
        description="Start N processes of COMMAND on this machine as one jax.distributed job"
        " (coordinator on 127.0.0.1). Everything after `--` is the command, passed on unchanged.",
    )
    parser.add_argument(
        "-n", "--num-processes", type=int, required=True, help="number of processes (>= 1)"
    )
    parser.add_argument(
        "--port", type=int, default=None, help="coordinator port (default: a free one)"
    )
    parser.add_argument(
        "--devices-per-process",
        type=int,
        default=1,
        help="JAXKD_LOCAL_DEVICE_COUNT: CPU devices each process exposes (default 1)",
    )
    parser.add_argument(
        "--kill-timeout",
        type=float,
        default=30.0,
        help="seconds from SIGTERM to SIGKILL when stopping processes (default 30: time to save)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print one shell command per process; start nothing"
    )
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    command = argv[split + 1 :]
    if not command:
        parser.error("missing COMMAND: put the command to run after `--`")
    if args.num_processes < 1:
        parser.error("-n/--num-processes must be >= 1")
    if args.devices_per_process < 1:
        parser.error("--devices-per-process must be >= 1")
    if args.port is not None and not 0 < args.port < 65536:
        parser.error("--port must be in 1..65535")
    return args, command


def process_env(i: int, n: int, address: str, devices: int) -> dict[str, str]:
    """The variables process ``i`` gets on top of (or instead of) the launcher's environment."""
    env = {
        "JAXKD_COORDINATOR_ADDRESS": address,
        "JAXKD_NUM_PROCESSES": str(n),
        "JAXKD_PROCESS_ID": str(i),
        "JAXKD_LOCAL_DEVICE_COUNT": str(devices),
    }
    if "JAX_PLATFORMS" not in os.environ:
        env["JAX_PLATFORMS"] = "cpu"
    xla_flags = os.environ.get("XLA_FLAGS")
    if xla_flags is not None and _DEVICE_COUNT_FLAG.search(xla_flags):
        env["XLA_FLAGS"] = " ".join(_DEVICE_COUNT_FLAG.sub("", xla_flags).split())
    return env


def _parent_death_signal():
    """A preexec_fn asking Linux to SIGTERM the child if the launcher dies (even by SIGKILL)."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # Looked up before fork.
    launcher = os.getpid()

    def preexec():
        prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG.
        if os.getppid() != launcher:  # The launcher died before prctl took effect.
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def _pump(src, dst, prefix: bytes, lock: threading.Lock) -> None:
    """Copies the pipe ``src`` to the binary stream ``dst``, prefixing every line."""
    fd = src.fileno()
    pending = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            chunk = b""
        if not chunk:
            break
        pieces = _LINE_END.split(pending + chunk)
        pending = pieces.pop()  # The unfinished line (b"" after a line end).
        if pieces:
            with lock:
                dst.write(b"".join(prefix + piece for piece in pieces))
                dst.flush()
    if pending:
        with lock:
            dst.write(prefix + pending + b"\n")
            dst.flush()
    src.close()


class Group:
    """N child processes of one command, each leading its own process group."""

    def __init__(self, command: list[str], envs: list[dict[str, str]], kill_timeout: float):
        self.kill_timeout = kill_timeout
        self.procs: list[subprocess.Popen] = []
        self.returncodes: list[int | None] = [None] * len(envs)
        self.stop_deadline: float | None = None
        self.threads: list[threading.Thread] = []
        preexec = _parent_death_signal()
        try:
            for env in envs:
                self.procs.append(
                    subprocess.Popen(
                        command,
                        env={**os.environ, **env},
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                        start_new_session=True,
                        preexec_fn=preexec,  # No threads run yet, so preexec_fn is safe.
                    )
                )
        except BaseException:
            self.returncodes = self.returncodes[: len(self.procs)]
            self.kill(signal.SIGKILL)
            self.wait_all()
            raise
        # Reader threads start after the last fork: forking while threads run is fragile.
        lock = threading.Lock()
        for i, p in enumerate(self.procs):
            prefix = f"[p{i}] ".encode()
            for src, dst in ((p.stdout, sys.stdout.buffer), (p.stderr, sys.stderr.buffer)):
                t = threading.Thread(target=_pump, args=(src, dst, prefix, lock), daemon=True)
                t.start()
                self.threads.append(t)

    def running(self) -> list[int]:
        return [i for i, rc in enumerate(self.returncodes) if rc is None]

    def kill(self, sig: int) -> None:
        """Sends ``sig`` to the process group of every child still running."""
        for i in self.running():
            try:
                os.killpg(self.procs[i].pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Asks every child to stop with ``sig``; :meth:`poll` sends SIGKILL after kill_timeout."""
        if self.stop_deadline is None:
            self.stop_deadline = time.monotonic() + self.kill_timeout
        self.kill(sig)

    def poll(self) -> list[int]:
        """Reaps the children that exited since the last call and returns their indices."""
        done = []
        for i in self.running():
            pid = self.procs[i].pid
            # WNOWAIT leaves the exited child a zombie, so its pid (= its process group id) cannot
            # be reused while we SIGKILL whatever it left running in its group.
            try:
                exited = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
            except ChildProcessError:
                exited = True
            if not exited:
                continue
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.returncodes[i] = self.procs[i].wait()
            done.append(i)
        if self.stop_deadline is not None and time.monotonic() > self.stop_deadline:
            if self.running():
                _log(
                    f"processes {self.running()} still running {self.kill_timeout:g}s after"
                    " being asked to stop; sending SIGKILL"
                )
                self.kill(signal.SIGKILL)
            self.stop_deadline = float("inf")
        return done

    def wait_all(self) -> None:
        for i in self.running():
            self.returncodes[i] = self.procs[i].wait()
        for t in self.threads:
            t.join(timeout=5)


def _exit_code(rc: int) -> int:
    """Shell convention: a child killed by signal S reports 128 + S."""
    return rc if rc >= 0 else 128 - rc


def main(argv: list[str]) -> int:
    args, command = parse_args(argv)
    n = args.num_processes
    address = f"127.0.0.1:{args.port if args.port is not None else free_port()}"
    envs = [process_env(i, n, address, args.devices_per_process) for i in range(n)]

    if args.dry_run:
        for env in envs:
            assignments = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
            print(f"{assignments} {shlex.join(command)}")
        return 0

    received: list[int] = []
    group: Group | None = None

    def on_signal(signum, frame):
        del frame
        received.append(signum)
        if group is None:  # Still starting; handled right after.
            return
        name = signal.Signals(signum).name
        if len(received) == 1:
            _log(f"got {name}; forwarding it to all processes")
            group.stop(signum)
        else:
            _log(f"got {name} again; killing all processes")
            group.kill(signal.SIGKILL)

    previous = {s: signal.signal(s, on_signal) for s in _FORWARDED}
    failure: tuple[int, int] | None = None
    try:
        # (Not blocking signals meanwhile: children would inherit the blocked mask.)
        group = Group(command, envs, args.kill_timeout)
        if received:  # Arrived while the processes were starting.
            group.stop(received[0])
        pids = [p.pid for p in group.procs]
        _log(f"started {n} processes (pids {pids}), coordinator {address}")
        while group.running():
            for i in group.poll():
                rc = group.returncodes[i]
                if rc != 0 and failure is None and not received:
                    failure = (i, rc)
                    others = group.running()
                    _log(
                        f"process {i} failed with exit code {_exit_code(rc)}"
                        + (f"; terminating processes {others}" if others else "")
                    )
                    group.stop(signal.SIGTERM)
            time.sleep(0.05)
        group.wait_all()
    finally:
        if group is not None and group.running():  # Only on an exception above.
            group.kill(signal.SIGKILL)
            group.wait_all()
        for s, handler in previous.items():
            signal.signal(s, handler)

    if failure is not None:
        i, rc = failure
        _log(f"FAILED: process {i} exited with code {_exit_code(rc)}")
        return _exit_code(rc)
    if received:
        codes = [_exit_code(rc) for rc in group.returncodes]
        _log(f"stopped by {signal.Signals(received[0]).name}; exit codes {codes}")
        return 128 + received[0]
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Start a multi-process training job on this machine: N processes of train.py, CPU devices.

    python scripts/launch_local.py --num_processes=2 --devices_per_process=2 -- \\
        --workdir=/tmp/two_hosts --config.parallelism=mesh --config.mesh_shape=data=2,fsdp=2

Each process plays one host of a cluster: it sees `devices_per_process` CPU devices of
its own, joins the others through `jax.distributed` (process 0 runs the coordinator on
a free local port) and exchanges arrays with them through gloo over TCP. Everything
after `--` goes to every train.py unchanged. Process 0 prints the run's log; the others
print only errors.

The launcher waits for every process. When one fails, the others are given
`--grace_seconds` to fail by themselves (JAX's heartbeat notices a dead peer) before
they are stopped; the launcher exits with the first failure's code.
"""

import argparse
import os
import pathlib
import socket
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port nobody listens on now, for the coordinator."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def process_environment(devices: int) -> dict[str, str]:
    """This machine's environment, with `devices` CPU devices and no accelerator."""
    environment = dict(os.environ, JAX_PLATFORMS="cpu")
    # The launcher decides the device count, whatever the caller's XLA_FLAGS said.
    flags = [
        flag
        for flag in environment.get("XLA_FLAGS", "").split()
        if not flag.startswith("--xla_force_host_platform_device_count")
    ]
    flags.append(f"--xla_force_host_platform_device_count={devices}")
    environment["XLA_FLAGS"] = " ".join(flags)
    return environment


def launch(num_processes: int, devices_per_process: int, train_flags: list[str]) -> list:
    """Start every process of the job; returns their Popen handles, process 0 first."""
    coordinator = f"localhost:{free_port()}"
    environment = process_environment(devices_per_process)
    processes = []
    for process_id in range(num_processes):
        command = [
            sys.executable,
            str(REPO / "train.py"),
            *train_flags,
            "--config.distributed=True",
            f"--config.coordinator_address={coordinator}",
            f"--config.num_processes={num_processes}",
            f"--config.process_id={process_id}",
        ]
        processes.append(subprocess.Popen(command, cwd=REPO, env=environment))
    return processes


def wait_for_all(processes: list, grace_seconds: float) -> int:
    """0 when every process succeeds; else the first failure's exit code."""
    first_failure, failed_at = None, None
    while any(process.poll() is None for process in processes):
        for process_id, process in enumerate(processes):
            if process.returncode not in (None, 0) and first_failure is None:
                first_failure, failed_at = process.returncode, time.monotonic()
                print(
                    f"launch_local: process {process_id} exited with code {process.returncode}; "
                    f"the others get {grace_seconds:.0f} s to stop",
                    file=sys.stderr,
                    flush=True,
                )
        if failed_at is not None and time.monotonic() - failed_at > grace_seconds:
            for process in processes:
                if process.poll() is None:
                    process.terminate()
        time.sleep(0.2)
    codes = [process.returncode for process in processes]
    failures = [code for code in codes if code != 0]
    return 0 if not failures else (first_failure or failures[0])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--num_processes", type=int, default=2)
    parser.add_argument("--devices_per_process", type=int, default=2)
    parser.add_argument("--grace_seconds", type=float, default=120.0)
    parser.add_argument("train_flags", nargs=argparse.REMAINDER, help="-- then train.py flags")
    args = parser.parse_args()
    train_flags = args.train_flags[1:] if args.train_flags[:1] == ["--"] else args.train_flags
    processes = launch(args.num_processes, args.devices_per_process, train_flags)
    try:
        return wait_for_all(processes, args.grace_seconds)
    except KeyboardInterrupt:  # Ctrl-C: every process saves and stops (train.py's SIGINT)
        return wait_for_all(processes, args.grace_seconds)


if __name__ == "__main__":
    sys.exit(main())

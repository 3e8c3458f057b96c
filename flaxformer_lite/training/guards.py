"""What stops a training run early, safely: a second run, a signal, a non-finite step.

- `WorkdirLock`: one live run per workdir, through a lock file holding the PID.
- `StopSignals`: SIGTERM / SIGINT ask the loop to save and stop at the next step.
- `NonFiniteSteps`: reads each step's "nonfinite" flag one step late (the host
  never waits for the device just to check it), then stops or counts the skip.
"""

import os
import signal
import socket

import jax
import numpy as np
from jax.experimental import multihost_utils

LOCK_FILE = "train.lock"


class WorkdirInUseError(RuntimeError):
    """Another live train.py holds the workdir."""


class NonFiniteError(RuntimeError):
    """A step produced a NaN or inf loss, gradient norm or update (it was not applied)."""


class Interrupted(Exception):
    """A stop signal arrived; the run saved a checkpoint at `step` and stopped."""

    def __init__(self, signal_number: int, step: int, directory: str):
        self.signal_number = signal_number
        self.exit_code = 128 + signal_number  # the shell's convention for "ended by a signal"
        name = signal.Signals(signal_number).name
        super().__init__(
            f"{name}: saved a checkpoint at step {step} in {directory}; "
            "run the same command to resume."
        )


class WorkdirLock:
    """`with WorkdirLock(workdir):` holds WORKDIR/train.lock ("host pid") for the run.

    A lock whose process no longer runs on this host is stale (a run killed
    with -9 leaves one) and is taken over. A lock from another host cannot be
    checked, so it counts as live.
    """

    def __init__(self, workdir: str):
        self.path = os.path.join(os.path.abspath(workdir), LOCK_FILE)
        self.owner = f"{socket.gethostname()} {os.getpid()}"

    def __enter__(self):
        try:
            self._create()
        except FileExistsError:
            holder = self._read_holder()
            if _is_running(holder):
                raise WorkdirInUseError(
                    f"{os.path.dirname(self.path)} is in use by another run ({holder}, lock "
                    f"file {self.path}); wait for it to finish, stop it, or use another "
                    "--workdir."
                ) from None
            print(f"Taking over the stale lock {self.path} of a run that ended ({holder}).")
            os.remove(self.path)
            self._create()
        return self

    def __exit__(self, *exc_info):
        if self._read_holder() == self.owner:
            os.remove(self.path)

    def _create(self):
        file = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        with os.fdopen(file, "w") as f:
            f.write(self.owner)

    def _read_holder(self) -> str:
        try:
            with open(self.path) as f:
                return f.read().strip()
        except FileNotFoundError:
            return ""


def _is_running(holder: str) -> bool:
    """Is the process named by "host pid" alive? Unreadable or foreign-host: assume so."""
    host, _, pid = holder.rpartition(" ")
    if not pid.isdigit():
        return False  # an empty or garbled file: its writer died while writing
    if host != socket.gethostname():
        return True
    try:
        os.kill(int(pid), 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


class StopSignals:
    """`with StopSignals() as stop:` records SIGTERM / SIGINT instead of dying at once.

    The loop asks `stop.requested(step)` after each step. On several hosts the
    signal reaches each process at its own moment, so every `sync_every` steps
    all processes all-gather their flags and stop together, at the same step,
    if any was signalled. A second signal gets the default behaviour back
    (Ctrl-C twice kills).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, sync_every: int = 10):
        self.sync_every = sync_every
        self.received: int | None = None
        self._previous = {}

    def __enter__(self):
        for number in self.SIGNALS:
            self._previous[number] = signal.signal(number, self._record)
        return self

    def __exit__(self, *exc_info):
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    def _record(self, number, frame):
        self.received = number
        signal.signal(number, self._previous[number])

    def requested(self, step: int) -> bool:
        if jax.process_count() == 1:
            return self.received is not None
        if step % self.sync_every != 0:
            return False
        flags = multihost_utils.process_allgather(np.int32(self.received or 0))
        self.received = int(flags.max()) or None
        return self.received is not None


class NonFiniteSteps:
    """Checks each step's "nonfinite" flag once the next step has been dispatched.

    `push(step, flag)` after dispatching step `step` checks the step before;
    `flush()` checks the last one (before a save or an evaluation). With
    `skip=False` a non-finite step raises NonFiniteError; with `skip=True` it
    is counted and logged. The flag comes from summed values, so every process
    sees the same one.
    """

    def __init__(self, *, skip: bool, last_good_checkpoint):
        self.skip = skip
        self.last_good_checkpoint = last_good_checkpoint  # () -> description, for the error
        self.skipped = 0
        self._pending = None

    def push(self, step: int, flag: jax.Array) -> None:
        previous, self._pending = self._pending, (step, flag)
        if previous is not None:
            self._check(*previous)

    def flush(self) -> None:
        if self._pending is not None:
            self._check(*self._pending)
            self._pending = None

    def _check(self, step: int, flag: jax.Array) -> None:
        if not np.asarray(jax.device_get(flag)).any():
            return
        if not self.skip:
            raise NonFiniteError(
                f"step {step} has a non-finite loss, gradient norm or update, so training "
                f"stopped before applying it; last good checkpoint: "
                f"{self.last_good_checkpoint()}. Lower the learning rate, or pass "
                "--config.skip_nonfinite=True to skip such steps."
            )
        self.skipped += 1
        print(f"step {step}: non-finite loss or update, skipped ({self.skipped} so far)")

"""Benchmark work in spawned worker processes.

Trainings that each keep about one core busy run side by side, one per core; and a
model measured after others in one process is measured in a process they have aged
(threads, caches and allocations left behind), so a table would carry the order it was
run in. Each call of `in_workers` starts fresh processes: spawned, since a forked
child would share jax's threads.
"""

import concurrent.futures
import multiprocessing
import os
import threading
import time

from absl import logging


def in_workers(function, jobs: list[tuple], *, workers: int):
    """Yield (job, function(*job)) for every job, as each finishes.

    The jobs run `workers` at a time in new processes, started in the order given. A
    worker ends when the benchmark does, even if the benchmark is killed.
    """
    spawn = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=spawn, initializer=_exit_with_parent, initargs=(os.getpid(),)
    ) as pool:
        pending = {pool.submit(function, *job): job for job in jobs}
        for future in concurrent.futures.as_completed(pending):
            yield pending[future], future.result()


def _exit_with_parent(parent: int) -> None:
    """Worker initializer: a daemon thread ends this worker once `parent` is gone."""

    def watch():
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(1)

    logging.set_verbosity(logging.ERROR)  # tfds and orbax warn at every run
    threading.Thread(target=watch, daemon=True).start()

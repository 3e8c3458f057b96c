"""Several hosts, one data pipeline: who does shared work, and how the others wait for it.

Work whose result is a file every host reads (preparing a dataset, training the tokenizer) is
done by process 0 alone; the other processes poll until the file is there. Each host then
reads its own shard of the data (`pipeline.py`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import jax

from flaxformer_lite.data.errors import DataError

WAIT_TIMEOUT_SECONDS = 4 * 3600.0  # Long enough for process 0 to download and prepare WMT.
POLL_SECONDS = 1.0


def process_index_and_count() -> tuple[int, int]:
    """This host's index and the number of hosts, as JAX sees them."""
    return jax.process_index(), jax.process_count()


def wait_for(ready: Callable[[], bool], what: str, timeout_seconds: float | None = None) -> None:
    """Polls `ready()` until it is true; after the timeout, raises `DataError`."""
    if timeout_seconds is None:
        timeout_seconds = WAIT_TIMEOUT_SECONDS
    deadline = time.monotonic() + timeout_seconds
    while not ready():
        if time.monotonic() > deadline:
            raise DataError(
                f"Gave up after {timeout_seconds:.0f} s waiting for {what}: check that process 0 "
                "is running and that all hosts share the workdir and config.data_dir."
            )
        time.sleep(POLL_SECONDS)

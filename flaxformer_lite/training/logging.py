"""Where metrics go: one JSON line per eval in metrics.jsonl, and TensorBoard events."""

import json
import os

from tensorboardX import SummaryWriter


class MetricWriter:
    """Writes metrics from process 0 only; other hosts get a writer that does nothing."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        if enabled:
            os.makedirs(workdir, exist_ok=True)
            self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
            self.tensorboard = SummaryWriter(logdir=workdir)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        with open(self.jsonl_path, "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        for name, value in metrics.items():
            self.tensorboard.add_scalar(name, value, step)
        self.tensorboard.flush()

    def close(self) -> None:
        if self.enabled:
            self.tensorboard.close()


def format_metrics(metrics: dict[str, float]) -> str:
    """`key=value ...` with compact numbers: the shape of the run's `final:` line."""
    return " ".join(f"{key}={value:.6g}" for key, value in metrics.items())

"""Train a flaxformer_lite model.

    python train.py                                  # configs/default.py, ./workdir
    python train.py --config=configs/wmt14_ende_base.py --workdir=/tmp/wmt
    python train.py --config.num_train_steps=2000    # override any config field

Running the same command again resumes from the workdir's latest checkpoint.
SIGTERM or Ctrl-C saves a checkpoint at the current step first, then exits
with 128 + the signal number (143 for SIGTERM, 130 for SIGINT). Anticipated
bad input (config, data, checkpoint, a workdir another run holds, a step gone
NaN) ends with one line `error: ...` and exit code 1.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from flaxformer_lite.data import DataError
from flaxformer_lite.experiment import ConfigError
from flaxformer_lite.training.checkpoint import CheckpointError
from flaxformer_lite.training.guards import Interrupted, NonFiniteError, WorkdirInUseError
from flaxformer_lite.training.trainer import train_and_evaluate

ANTICIPATED_ERRORS = (ConfigError, DataError, CheckpointError, NonFiniteError, WorkdirInUseError)

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "default.py")

config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "Experiment config file.")
flags.DEFINE_string("workdir", "workdir", "Checkpoints, metrics and prepared data go here.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # orbax logs every save step at INFO
    try:
        train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)
    except ANTICIPATED_ERRORS as error:  # bad input: one line, no stack trace
        raise SystemExit(f"error: {error}") from None
    except Interrupted as interruption:
        print(f"interrupted: {interruption}", flush=True)
        sys.exit(interruption.exit_code)


if __name__ == "__main__":
    app.run(main)

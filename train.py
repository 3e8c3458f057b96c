"""Train a flaxformer_lite model.

    python train.py                                  # configs/default.py, ./workdir
    python train.py --config=configs/wmt14_ende_base.py --workdir=/tmp/wmt
    python train.py --config.num_train_steps=2000    # override any config field

Running the same command again resumes from the workdir's latest checkpoint.
"""

import os

from absl import app, flags, logging
from ml_collections import config_flags

from flaxformer_lite.data import DataError
from flaxformer_lite.training.checkpoint import CheckpointError
from flaxformer_lite.training.trainer import train_and_evaluate

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "default.py")

config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "Experiment config file.")
flags.DEFINE_string("workdir", "workdir", "Checkpoints, metrics and prepared data go here.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # orbax logs every save step at INFO
    try:
        train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)
    except (DataError, CheckpointError) as error:  # bad input: one line, no stack trace
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    app.run(main)

"""A decoder-only language model (a GPT) on the built-in reversal task, no download.

Each example is one row `source SEP target EOS`; the loss counts only `target EOS`, and
evaluation generates the completion after `source SEP` with the KV cache and scores exact
match on 1,000 held-out strings. Aimed at exact_match >= 0.99 in under 5 minutes on a
2-core CPU: `python train.py --config=configs/lm_default.py --workdir=runs/lm`.

Starts from configs/default.py and overrides what differs.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model = "decoder_only"
    config.dataset = "reverse"  # any synthetic task, tsv or aligned: prompt -> completion

    # A row holds source (<= 12) SEP target (<= 12) EOS: 26 tokens; packed rows of 32.
    config.max_target_length = 32
    config.max_decode_length = 32  # generation writes the prompt and its completion
    config.per_device_batch_size = 128

    # One stack does the work of encoder and decoder: one layer more than each of theirs.
    config.num_decoder_layers = 3
    # The optimisation configs/default.py had when this config was tuned.
    config.dropout_rate = 0.1
    config.schedule = "rsqrt"
    config.learning_rate = 1.0
    config.warmup_steps = 300
    config.num_train_steps = 1200
    config.eval_every_steps = 400
    config.checkpoint_every_steps = 400
    return config

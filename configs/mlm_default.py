"""Masked-LM pre-training of a small BERT on the built-in reversal pairs, no download.

Each row is BERT's sentence pair `CLS source SEP reversed-source SEP`; 15% of its tokens
are chosen afresh every epoch (80% MASK, 10% random, 10% kept) and predicted from both
sides, so a masked digit can be read off its mirror image in the other half. Evaluation
reports the loss and accuracy at the chosen positions of held-out rows (fixed masks):

    python train.py --config=configs/mlm_default.py --workdir=runs/mlm
    python train.py --config=configs/mlm_default.py --config.dataset=text \
        --config.train_file=my.txt --workdir=runs/mlm_text       # one line of text a row
    python train.py --config=configs/classify_default.py --config.init_from=runs/mlm \
        --config.max_source_length=32 --config.norm_placement=post \
        --workdir=runs/classify_from_mlm   # the same position table and norm placement

Starts from configs/default.py and overrides what differs.
"""

import ml_collections

from configs import _small_bert, default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model = "encoder_only"
    config.dataset = "reverse"
    config.max_source_length = 32  # CLS, up to 12 digits, SEP, their reversal, SEP; packed
    config.overlong = "truncate"  # a long line of text is cut, keeping its final SEP

    _small_bert.apply(config, norm_placement="post")
    config.num_train_steps = 600
    config.warmup_steps = 60
    config.eval_every_steps = 150
    config.checkpoint_every_steps = 300
    return config

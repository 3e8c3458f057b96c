"""nanoGPT's character-level Shakespeare: a decoder-only model on tiny_shakespeare, bytes.

The byte tokenizer makes each character of the (ASCII) play one token. Training reads
windows of 256 characters at random offsets; evaluation tiles the validation split and
reports the held-out loss per character in nats (eval_loss) and bits per byte.

    python train.py --config=configs/shakespeare_char.py --workdir=runs/shakespeare

These are nanoGPT's GPU settings (config/train_shakespeare_char.py). Its CPU-sized
variant (4 layers, 4 heads, d_model 128, context 64, batch 12, 2000 steps, no dropout),
which trains in minutes on a laptop; per_device_batch_size is per device, so 12 rows a
step on one CPU:

    python train.py --config=configs/shakespeare_char.py --workdir=runs/shakespeare_cpu \\
        --config.num_decoder_layers=4 --config.num_heads=4 --config.d_model=128 \\
        --config.d_ff=512 --config.max_target_length=64 --config.max_decode_length=64 \\
        --config.per_device_batch_size=12 --config.per_device_eval_batch_size=12 \\
        --config.num_train_steps=2000 --config.dropout_rate=0 \\
        --config.attention_dropout_rate=0

Either trains on your own text instead of the catalog's with `--config.dataset=text
--config.train_file=my.txt` (its last 10% held out). Then
`python -m flaxformer_lite.generate --workdir=runs/shakespeare --prompt="ROMEO:"`.

Starts from configs/default.py and overrides what differs.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model = "decoder_only"
    config.dataset = "tiny_shakespeare"
    config.tokenizer = "byte"

    # Context of 256 characters, 64 windows a step.
    config.max_target_length = 256
    config.max_decode_length = 256
    config.per_device_batch_size = 64
    config.per_device_eval_batch_size = 64

    # 6 layers, 6 heads, d_model 384, a 4x MLP with GELU, learned positions, pre-LN, tied
    # output; dropout 0.2 on the residual branches and the attention weights, as nanoGPT's.
    config.num_decoder_layers = 6
    config.num_heads = 6
    config.d_model = 384
    config.d_ff = 4 * 384
    config.mlp = "gelu_tanh"
    config.position_encoding = "learned"
    config.norm_placement = "pre"
    config.tie_output_embedding = True
    config.dropout_rate = 0.2
    config.attention_dropout_rate = 0.2

    # AdamW (betas 0.9, 0.99; weight decay 0.1) at 1e-3, 100 warm-up steps, then cosine
    # decay to 1e-4 at step 5000; gradients clipped to global norm 1.
    config.num_train_steps = 5000
    config.schedule = "cosine"
    config.learning_rate = 1e-3
    config.min_learning_rate = 1e-4
    config.warmup_steps = 100
    config.adam_b1 = 0.9
    config.adam_b2 = 0.99
    config.adam_eps = 1e-8
    config.weight_decay = 0.1
    config.grad_clip_norm = 1.0
    config.label_smoothing = 0.0

    # nanoGPT evaluates every 250 steps (on 200 random batches; here the whole split).
    config.eval_every_steps = 250
    config.checkpoint_every_steps = 500
    return config

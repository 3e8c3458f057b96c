"""The paper's base model on WMT14 English -> German (for GPUs/TPUs).

Vaswani et al. (2017), table 3 "base": 6+6 layers, d_model 512, 8 heads,
d_ff 2048, dropout 0.1, label smoothing 0.1, 4000 warm-up steps, 100k steps,
shared 37k-token vocabulary (SentencePiece here, trained on the training split).
Batches of about 25k source + 25k target tokens, as in the paper (section 5.1):
8 devices x 12 packed rows x 256 slots = 24,576 slots per side. Packing fills most
of each row, so the real (non-pad) tokens are a little fewer; the data info line
at start-up prints them for the first batch. On N devices keep the product at 96
rows: per_device_batch_size = 96 / N. (At 64 rows per device the batch would be
131k slots, 5x the paper's, under the paper's learning rate.)
"""

from configs import default


def get_config():
    config = default.get_config()
    config.dataset = "wmt14_translate/de-en"
    config.reverse_translation = True  # the catalog pairs are de-en; we translate en -> de
    config.tokenizer = "sentencepiece"
    config.vocab_size = 37_000
    config.max_source_length = 256
    config.max_target_length = 256
    config.overlong = "filter"
    config.pack_examples = True
    config.per_device_batch_size = 12  # x 8 devices x 256 = 24,576 token slots per side
    config.per_device_eval_batch_size = 64  # evaluation batches do not change the model

    config.d_model = 512
    config.num_heads = 8
    config.d_ff = 2048
    config.num_encoder_layers = 6
    config.num_decoder_layers = 6
    config.dropout_rate = 0.1
    config.norm_placement = "post"  # the paper's layout; "pre" is the stabler default
    config.dtype = "bfloat16"  # params, softmax, norms and loss stay float32

    config.num_train_steps = 100_000
    config.schedule = "rsqrt"
    config.learning_rate = 1.0  # exactly the paper's d^-0.5 * min(s^-0.5, s * w^-1.5)
    config.warmup_steps = 4_000
    config.label_smoothing = 0.1

    config.log_every_steps = 100
    config.eval_every_steps = 5_000
    config.max_decode_length = 256
    config.beam_size = 4
    config.eval_bleu = True
    config.length_penalty_alpha = 0.6
    config.checkpoint_every_steps = 5_000
    return config

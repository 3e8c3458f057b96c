"""A small model for a quick real-data run: TED talks Portuguese -> English.

About 50k sentence pairs; a 4+4-layer, d_model 256 model trains in well under
an hour on one GPU. Prepare the data once on a machine with internet access.
"""

from configs import default


def get_config():
    config = default.get_config()
    config.dataset = "ted_hrlr_translate/pt_to_en"
    config.tokenizer = "sentencepiece"
    config.vocab_size = 8_000
    config.max_source_length = 128
    config.max_target_length = 128
    config.per_device_batch_size = 64
    config.per_device_eval_batch_size = 64

    config.d_model = 256
    config.num_heads = 4
    config.d_ff = 1024
    config.num_encoder_layers = 4
    config.num_decoder_layers = 4
    config.dropout_rate = 0.1

    config.num_train_steps = 20_000
    config.schedule = "rsqrt"
    config.learning_rate = 2.0
    config.warmup_steps = 4_000
    config.log_every_steps = 100
    config.eval_every_steps = 2_000
    config.max_decode_length = 128
    config.beam_size = 4
    config.eval_bleu = True
    config.checkpoint_every_steps = 2_000
    return config

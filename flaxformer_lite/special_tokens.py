"""The special token ids, fixed in one place for every tokenizer and model."""

PAD_ID = 0  # Padding; excluded from losses and attention. Also the decoder's "nothing yet".
EOS_ID = 1  # End of sequence: appended to every source and target.
BOS_ID = 2  # Beginning of sequence: the first decoder input after `shift_right`.
UNK_ID = 3  # Unknown piece (SentencePiece); byte-level tokenizers never emit it.
NUM_SPECIAL_TOKENS = 4  # Ordinary tokens start at this id.

"""The special token ids, fixed in one place for every tokenizer and model.

Text never encodes to one of them: the pipeline inserts them, and `decode` leaves them out.
"""

PAD_ID = 0  # Padding; excluded from losses and attention. Also the decoder's "nothing yet".
EOS_ID = 1  # End of sequence: appended to every source and target.
BOS_ID = 2  # Beginning of sequence: the first decoder input after `shift_right`.
UNK_ID = 3  # Unknown piece (SentencePiece); byte-level tokenizers never emit it.
SEP_ID = 4  # Separates a language model's prompt from its completion: source SEP target EOS.
CLS_ID = 5  # Reserved for a classifier's summary position (BERT).
MASK_ID = 6  # Reserved for a masked-out input token (BERT).
NUM_SPECIAL_TOKENS = 7  # Ordinary tokens start at this id.

# The reserved ids after UNK, with the names SentencePiece gives their pieces.
RESERVED_PIECES = {SEP_ID: "<sep>", CLS_ID: "<cls>", MASK_ID: "<mask>"}

"""The encoder-only families: BERT pre-trained by masked LM, and sequence classifiers.

    encoder_only        masked-LM pre-training. Reads `inputs` (B, S), masked afresh every
                        epoch by the pipeline (data/masking.py), and predicts the original
                        tokens at `mlm_positions` (B, P); loss and accuracy count those
                        chosen positions only (`mlm_weights`).
    encoder_classifier  one label per sequence from the pooled first token (CLS). Reads
                        `inputs` (B, S) and `targets` (B, 1), the label's index; evaluation
                        reports accuracy and macro-F1. With `config.teacher` it is distilled
                        from a trained classifier (training/distill.py).

Both can start from another encoder-only run or from a Hugging Face BERT-family checkpoint
(`config.init_from`): every part of the model the source has (embeddings, encoder layers,
heads of the same shape) is loaded, the rest (a new classifier head, a pooler that
masked-LM never trained) keeps its fresh initialisation. A checkpoint also decides the
architecture and the tokenizer (pretrained/finetune.py).
Neither generates text: evaluation is the teacher-forced metrics alone.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from flaxformer_lite import flops
from flaxformer_lite.config import ConfigError, TransformerConfig, required_field
from flaxformer_lite.data import masking
from flaxformer_lite.data.formats import class_labels
from flaxformer_lite.data.options import DataError, DataOptions
from flaxformer_lite.families.base import Batch, ModelFamily, transformer_config_from
from flaxformer_lite.models.encoder_only import EncoderOnlyTransformer
from flaxformer_lite.pretrained import finetune
from flaxformer_lite.special_tokens import PAD_ID
from flaxformer_lite.training import distill
from flaxformer_lite.training.losses import smoothed_cross_entropy, token_metrics


def encoder_inputs(batch: Batch) -> dict:
    """The encoder's keyword arguments: tokens and, for packed rows, segments and positions."""
    return {
        "inputs": batch["inputs"],
        "segmentation": batch.get("inputs_segmentation"),
        "positions": batch.get("inputs_position"),
    }


def encoder_forward_flops(config: TransformerConfig, batch: int, length: int) -> int:
    """Matmul FLOPs of the encoder stack's forward pass on (B, S) tokens."""
    layer = flops.attention_flops(batch, length, length, config.d_model)
    layer += flops.feed_forward_flops(batch, length, config.d_model, config.d_ff)
    return config.num_encoder_layers * layer


@dataclasses.dataclass(frozen=True)
class EncoderOnly(ModelFamily):
    """Masked-LM pre-training (BERT, with RoBERTa's dynamic masks and no next-sentence task)."""

    name = "encoder_only"
    generates_text = False
    model_config: TransformerConfig
    max_length: int
    max_predictions: int
    init_from: str | None = None
    num_token_types: int = 2

    @classmethod
    def from_config(cls, config, vocab_size: int) -> EncoderOnly:
        init_from = checked_init_from(config)
        return cls(
            model_config=encoder_config(config, vocab_size),
            max_length=config.max_source_length,
            max_predictions=masking.max_predictions(
                required_field(config, "mlm_probability"),
                config.max_source_length,
                required_field(config, "mlm_max_predictions"),
            ),
            init_from=init_from,
            num_token_types=required_field(config, "num_token_types"),
        )

    @property
    def module(self) -> EncoderOnlyTransformer:
        return EncoderOnlyTransformer(
            self.model_config, num_token_types=self.num_token_types, has_mlm_head=True
        )

    def example_batch(self) -> Batch:
        return {
            "inputs": jnp.ones((1, self.max_length), jnp.int32),
            "mlm_positions": jnp.zeros((1, self.max_predictions), jnp.int32),
        }

    def model_inputs(self, batch: Batch) -> dict:
        return {**encoder_inputs(batch), "masked_positions": batch["mlm_positions"]}

    def metric_sums(self, outputs, batch: Batch, *, label_smoothing: float) -> dict:
        return token_metrics(
            outputs["mlm_logits"],  # (B, P, V)
            batch["mlm_ids"],
            label_smoothing=label_smoothing,
            weights=batch["mlm_weights"],
        )

    def predict(self, params, batch: Batch):
        """The most likely token at each chosen position (B, P)."""
        return self.apply(params, batch)["mlm_logits"].argmax(axis=-1)

    def sources(self, batch: Batch):
        return batch["inputs"]

    def init_params(self, rng: jax.Array):
        return with_init_from(super().init_params(rng), self.init_from)

    def train_step_flops(self, num_rows: int) -> int:
        cfg = self.model_config
        head = 2 * num_rows * self.max_predictions * cfg.d_model * (cfg.d_model + cfg.vocab_size)
        return 3 * (encoder_forward_flops(cfg, num_rows, self.max_length) + head)


@dataclasses.dataclass(frozen=True)
class EncoderClassifier(ModelFamily):
    """One label per sequence: BERT's pooler over CLS, dropout, a linear classifier."""

    name = "encoder_classifier"
    generates_text = False
    model_config: TransformerConfig
    max_length: int
    labels: tuple[str, ...]
    init_from: str | None = None
    num_token_types: int = 2

    @classmethod
    def from_config(cls, config, vocab_size: int) -> EncoderClassifier:
        init_from = checked_init_from(config)
        fields = dict(
            model_config=encoder_config(config, vocab_size),
            max_length=config.max_source_length,
            labels=checked_class_labels(config),
            init_from=init_from,
            num_token_types=required_field(config, "num_token_types"),
        )
        if required_field(config, "teacher") is None:
            return cls(**fields)
        return DistilledClassifier.from_teacher(config, vocab_size, **fields)

    @property
    def module(self) -> EncoderOnlyTransformer:
        return EncoderOnlyTransformer(
            self.model_config,
            num_token_types=self.num_token_types,
            has_mlm_head=False,
            has_pooler=True,
            num_classes=len(self.labels),
        )

    def example_batch(self) -> Batch:
        return {"inputs": jnp.ones((1, self.max_length), jnp.int32)}

    def model_inputs(self, batch: Batch) -> dict:
        return encoder_inputs(batch)

    def metric_sums(self, outputs, batch: Batch, *, label_smoothing: float) -> dict:
        return classification_metrics(
            outputs["class_logits"], batch, label_smoothing=label_smoothing
        )

    def eval_metrics(self, sums: list[dict]) -> dict[str, float]:
        return {"macro_f1": macro_f1(sums, len(self.labels))}

    def predict(self, params, batch: Batch):
        """The predicted label index of each row (B,)."""
        return self.apply(params, batch)["class_logits"].argmax(axis=-1)

    def sources(self, batch: Batch):
        return batch["inputs"]

    def init_params(self, rng: jax.Array):
        return with_init_from(super().init_params(rng), self.init_from)

    def train_step_flops(self, num_rows: int) -> int:
        cfg = self.model_config
        heads = 2 * num_rows * cfg.d_model * (cfg.d_model + len(self.labels))
        return 3 * (encoder_forward_flops(cfg, num_rows, self.max_length) + heads)


@dataclasses.dataclass(frozen=True)
class DistilledClassifier(EncoderClassifier):
    """A classifier (the student) trained on a frozen teacher's softened outputs and the labels.

    Parameters are {"student": ..., "teacher": ...}; the teacher is a trained
    encoder_classifier run of any size with the same labels and tokenizer, and runs
    without dropout in the same jitted step (training/distill.py).
    """

    teacher_dir: str = ""
    teacher: EncoderClassifier | None = None
    temperature: float = 2.0
    alpha: float = 0.5

    @classmethod
    def from_teacher(cls, config, vocab_size: int, **fields) -> DistilledClassifier:
        teacher_dir = config.teacher
        teacher_config = distill.read_run_config(teacher_dir, "teacher")
        if teacher_config.model != EncoderClassifier.name or teacher_config.get("teacher"):
            raise ConfigError(
                f"config.teacher={teacher_dir!r} is not a plain encoder_classifier run "
                f"(model {teacher_config.model!r}): distil from a trained classifier."
            )
        teacher = EncoderClassifier(  # its own init_from does not matter: it is trained
            model_config=encoder_config(teacher_config, vocab_size),
            max_length=teacher_config.max_source_length,
            labels=checked_class_labels(teacher_config),
            num_token_types=teacher_config.get("num_token_types", 2),  # older runs: BERT's 2
        )
        if teacher.labels != fields["labels"]:
            raise ConfigError(
                f"config.teacher={teacher_dir!r} predicts labels {teacher.labels}, this run "
                f"{fields['labels']}: set config.class_labels to the teacher's."
            )
        temperature = required_field(config, "distill_temperature")
        alpha = required_field(config, "distill_alpha")
        if not temperature > 0:
            raise ConfigError(f"config.distill_temperature={temperature!r} must be positive.")
        if not 0 <= alpha <= 1:
            raise ConfigError(f"config.distill_alpha={alpha!r} must lie in [0, 1].")
        return cls(
            **fields, teacher_dir=teacher_dir, teacher=teacher, temperature=temperature, alpha=alpha
        )

    def init_params(self, rng: jax.Array):
        student = super().init_params(rng)
        teacher = distill.load_encoder_params(self.teacher_dir, "teacher")
        inputs = self.teacher.model_inputs(self.teacher.example_batch())
        shapes = jax.eval_shape(self.teacher.module.init, rng, **inputs)["params"]
        expected = jax.tree.map(jnp.shape, nn.meta.unbox(shapes))
        if jax.tree.map(jnp.shape, teacher) != expected:
            raise ConfigError(
                f"config.teacher={self.teacher_dir!r}: its checkpoint does not match its "
                "config.json (another model size); retrain the teacher."
            )
        print(f"distillation: the teacher is {self.teacher_dir} (frozen)")
        return {"student": student, "teacher": jax.tree.map(jnp.asarray, teacher)}

    def optimizer(self, tx: optax.GradientTransformation) -> optax.GradientTransformation:
        return distill.freeze_teacher(tx)

    def apply(self, params, batch: Batch, *, deterministic: bool = True, rngs=None, **kwargs):
        """The student's outputs (with dropout when training) and the teacher's class logits."""
        outputs = super().apply(
            params["student"], batch, deterministic=deterministic, rngs=rngs, **kwargs
        )
        teacher_params = jax.lax.stop_gradient(params["teacher"])
        teacher_outputs = self.teacher.apply(teacher_params, batch, deterministic=True)
        if isinstance(outputs, tuple):  # apply(..., mutable=[...]) -> (outputs, state)
            return {**outputs[0], "teacher_logits": teacher_outputs["class_logits"]}, outputs[1]
        return {**outputs, "teacher_logits": teacher_outputs["class_logits"]}

    def metric_sums(self, outputs, batch: Batch, *, label_smoothing: float) -> dict:
        sums = super().metric_sums(outputs, batch, label_smoothing=label_smoothing)
        hard_loss = example_cross_entropy(
            outputs["class_logits"], batch["targets"][:, 0], label_smoothing
        )
        loss = distill.distillation_loss(
            outputs["class_logits"],
            outputs["teacher_logits"],
            hard_loss,
            temperature=self.temperature,
            alpha=self.alpha,
        )  # (B,)
        sums["loss_sum"] = (loss * real_rows(batch)).sum()
        return sums


def real_rows(batch: Batch) -> jax.Array:
    """1.0 for a row that holds an example, 0.0 for an all-PAD row completing a batch. (B,)"""
    return (batch["inputs"][:, 0] != PAD_ID).astype(jnp.float32)


def example_cross_entropy(logits, labels, label_smoothing: float) -> jax.Array:
    """Cross-entropy of each example. (B, C), (B,) -> (B,)."""
    return smoothed_cross_entropy(logits[:, None, :], labels[:, None], label_smoothing)[:, 0]


def classification_metrics(logits, batch: Batch, *, label_smoothing: float) -> dict:
    """Metric sums over the real rows, one example each; the counts macro-F1 needs per class.

    Keys: those of `token_metrics` (an example counts as one token and one sequence), and
    for each class c: true_positives_c, predicted_c, actual_c.
    """
    labels = batch["targets"][:, 0]  # (B,)
    real = real_rows(batch)
    predicted = logits.argmax(axis=-1)  # (B,)
    correct = (predicted == labels).astype(jnp.float32) * real
    sums = {
        "loss_sum": (example_cross_entropy(logits, labels, label_smoothing) * real).sum(),
        "nll_sum": (example_cross_entropy(logits, labels, 0.0) * real).sum(),
        "correct_sum": correct.sum(),
        "token_count": real.sum(),
        "exact_sum": correct.sum(),
        "sequence_count": real.sum(),
    }
    for c in range(logits.shape[-1]):
        sums[f"true_positives_{c}"] = (correct * (labels == c)).sum()
        sums[f"predicted_{c}"] = (real * (predicted == c)).sum()
        sums[f"actual_{c}"] = (real * (labels == c)).sum()
    return sums


def macro_f1(sums: list[dict], num_classes: int) -> float:
    """The mean over classes of F1 = 2 TP / (predicted + actual), from summed counts.

    A class neither present nor predicted is left out of the mean (its F1 is undefined).
    """
    scores = []
    for c in range(num_classes):
        true_positives = sum(float(s[f"true_positives_{c}"]) for s in sums)
        predicted_and_actual = sum(float(s[f"predicted_{c}"] + s[f"actual_{c}"]) for s in sums)
        if predicted_and_actual > 0:
            scores.append(2.0 * true_positives / predicted_and_actual)
    return sum(scores) / max(len(scores), 1)


def checked_class_labels(config) -> tuple[str, ...]:
    try:
        return class_labels(DataOptions.from_config(config))
    except DataError as error:
        raise ConfigError(str(error)) from None


def encoder_config(config, vocab_size: int) -> TransformerConfig:
    """The encoder's TransformerConfig; a checkpoint to start from sets the positions."""
    model_config = transformer_config_from(config, vocab_size)
    init_from = config.get("init_from")
    if finetune.is_model_directory(init_from):  # its position table, whatever our lengths
        return dataclasses.replace(model_config, max_len=finetune.max_positions(init_from))
    return model_config


def checked_init_from(config) -> str | None:
    """config.init_from, checked now, before any work: an encoder-only run's workdir, or a
    Hugging Face checkpoint whose architecture the config has."""
    init_from = required_field(config, "init_from")
    if finetune.is_model_directory(init_from):
        finetune.check_against_checkpoint(config)
    elif init_from is not None:
        distill.read_run_config(init_from, "init_from")
    return init_from


def with_init_from(params: dict, init_from: str | None) -> dict:
    """`params` with every part the run or checkpoint `init_from` has loaded from it; says
    which, which stay fresh, and which parts of the source this model has no use for."""
    if init_from is None:
        return params
    if finetune.is_model_directory(init_from):
        source = f"a {finetune.load(init_from).model_type} checkpoint"
        pretrained = finetune.params(init_from)
    else:
        source = "an encoder-only run"
        pretrained = distill.load_encoder_params(init_from, "init_from")
    merged, loaded, fresh = distill.merge_pretrained(
        params, pretrained, f"config.init_from={init_from!r}"
    )
    unused = sorted(pretrained.keys() - params.keys())
    print(
        f"init_from {init_from} ({source}): loaded {', '.join(loaded) or 'nothing'}; "
        f"freshly initialised {', '.join(fresh) or 'nothing'}"
        + (f"; not used: {', '.join(unused)}" if unused else "")
    )
    return merged

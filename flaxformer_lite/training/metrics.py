"""Turning per-step metric sums into the means a person reads."""

import numpy as np


def summarize(step_metrics: list[dict]) -> dict[str, float]:
    """Token-weighted means over any number of steps' summed metrics.

    Each entry holds sums from `losses.token_metrics` (already added across
    devices). Sums are added across steps first and divided once.
    """
    totals = {key: float(np.sum([m[key] for m in step_metrics])) for key in step_metrics[0]}
    tokens = max(totals["token_count"], 1.0)
    sequences = max(totals["sequence_count"], 1.0)
    summary = {
        "loss": totals["loss_sum"] / tokens,
        "nll": totals["nll_sum"] / tokens,
        "perplexity": float(np.exp(min(totals["nll_sum"] / tokens, 50.0))),
        "accuracy": totals["correct_sum"] / tokens,
        "teacher_forced_exact": totals["exact_sum"] / sequences,
        "tokens": totals["token_count"],
    }
    if "grad_norm" in totals:
        summary["grad_norm"] = totals["grad_norm"] / len(step_metrics)
    if "nonfinite" in totals:
        summary["nonfinite_steps"] = totals["nonfinite"]
    return summary

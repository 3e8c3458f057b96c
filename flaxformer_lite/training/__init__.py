"""Losses, schedules, optimizers, the pure train/eval steps, parallelism, checkpoints."""

"""Reading config.json: required fields, and the activation names `transformers` uses."""

from __future__ import annotations

from flaxformer_lite.pretrained.weights import PretrainedError

# transformers' ACT2FN names -> our `mlp` / MLM-head activations.
ACTIVATIONS = {
    "relu": "relu",
    "gelu": "gelu",  # exact (erf)
    "gelu_new": "gelu_tanh",  # the tanh approximation (GPT-2)
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
}


def field(hf_config: dict, name: str, *, path: str):
    """hf_config[name], or a PretrainedError naming the field config.json lacks."""
    if name not in hf_config:
        raise PretrainedError(
            f"{path} has no {name!r}: a {hf_config.get('model_type')} config.json needs it; "
            "save the config with transformers' save_pretrained."
        )
    return hf_config[name]


def activation(hf_config: dict, name: str, *, path: str, default: str | None = None) -> str:
    """Our name for the activation hf_config[name] names (`default` when it is absent)."""
    value = (
        hf_config.get(name, default) if default is not None else field(hf_config, name, path=path)
    )
    if value not in ACTIVATIONS:
        raise PretrainedError(
            f"{path}: {name}={value!r} is not supported; use one of {sorted(ACTIVATIONS)}."
        )
    return ACTIVATIONS[value]


def refuse(hf_config: dict, name: str, allowed, *, path: str, why: str) -> None:
    """A PretrainedError when hf_config[name] is set to something other than `allowed`."""
    allowed = allowed if isinstance(allowed, tuple) else (allowed,)
    value = hf_config.get(name, allowed[0])
    if value not in allowed:
        raise PretrainedError(f"{path}: {name}={value!r} is not supported ({why}).")

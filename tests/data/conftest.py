"""Shared set-up for the data tests: small configs, and one small prepared task to reuse."""

import ml_collections
import pytest

from configs import default
from flaxformer_lite.data import DataOptions, create_datasets

SMALL = dict(num_train_examples=300, num_eval_examples=50, per_device_batch_size=4)


def small_config(**overrides) -> ml_collections.ConfigDict:
    """The experiment defaults, shrunk to a few hundred examples, with `overrides` applied."""
    return ml_collections.ConfigDict({**default.get_config().to_dict(), **SMALL, **overrides})


def small_options(**overrides) -> DataOptions:
    """The `DataOptions` of `small_config(**overrides)`."""
    return DataOptions.from_config(small_config(**overrides))


@pytest.fixture
def make_config():
    return small_config


@pytest.fixture
def make_options():
    return small_options


@pytest.fixture(scope="session")
def reverse_workdir(tmp_path_factory) -> str:
    """A workdir in which the small reverse task is already prepared."""
    workdir = str(tmp_path_factory.mktemp("reverse"))
    create_datasets(small_config(), workdir, num_local_devices=1)
    return workdir

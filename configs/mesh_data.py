"""Data parallel on a device mesh: every device holds the whole state and a share of each batch.

The same arithmetic as the default pmap run, under jax.jit (`parallelism="mesh"`,
mesh_shape="data=-1": all devices on the data axis):

    python train.py --config=configs/mesh_data.py --workdir=runs/mesh_data
    python train.py --config=configs/mesh_data.py --config.mesh_shape=data=2,fsdp=2

The logical axis rules are configs/default.py's (batch -> data and fsdp, embed -> fsdp,
heads, mlp and vocab -> tensor); an axis of size 1 splits nothing, so one set of rules
serves every layout. Any other experiment config takes the same two overrides:
`--config.parallelism=mesh --config.mesh_shape=...`.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.parallelism = "mesh"
    config.mesh_shape = "data=-1"
    return config

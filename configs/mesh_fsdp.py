"""Fully sharded data parallel (FSDP) on a device mesh.

The batch, and every parameter and Adam moment along its "embed" axis, split over all
devices (mesh_shape="fsdp=-1"): each device holds about 1/N of the state
(`python benchmarks/run.py --only sharding` measures it):

    python train.py --config=configs/mesh_fsdp.py --workdir=runs/mesh_fsdp
    python train.py --config=configs/mesh_fsdp.py --config.mesh_shape=data=2,fsdp=-1

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
    config.mesh_shape = "fsdp=-1"
    return config

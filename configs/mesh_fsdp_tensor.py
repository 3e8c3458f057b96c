"""FSDP across device pairs, tensor parallel within each pair.

Attention heads, the MLP hidden width and the vocabulary are split over the pair
(mesh_shape="fsdp=-1,tensor=2"), for models whose layers outgrow one device; the
device count must be even:

    python train.py --config=configs/mesh_fsdp_tensor.py --workdir=runs/mesh_fsdp_tensor
    python train.py --config=configs/mesh_fsdp_tensor.py --config.mesh_shape=fsdp=2,tensor=-1

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
    config.mesh_shape = "fsdp=-1,tensor=2"
    return config

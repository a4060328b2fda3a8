"""``expert_parallel``: a Mixture-of-Experts model's experts split across the workers, combined with sharded data
parallelism, on the 2-D device mesh ``(expert, data)`` of ``train.mesh``.

Each Mixture-of-Experts layer's experts are split over the ``expert`` dimension (a DTensor sharded on the expert
index: a worker holds ``num_experts / expert`` of them, and tokens reach them by ``all_to_all``) and sharded
further by FSDP2 over the ``data`` dimension. Every other module is under FSDP2 on the whole mesh (HSDP:
replicated over ``expert``, sharded over ``data``), so its gradients are the mean over every worker. An expert's
gradient adds up the tokens of its expert group: it is scaled by ``1 / expert`` (see ``MoELayer.shard_experts``)
and FSDP's mean over ``data`` makes it the mean over every worker too.
"""

from __future__ import annotations

import logging

import ray.train.torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import Shard, distribute_tensor

from rayline.models.moe import moe_layers
from rayline.spec import MeshSpec, TrainSpec
from rayline.train.strategies.base import shard_parameter_owners
from rayline.train.strategies.fsdp import FullyShardedDataParallel

MESH_DIMS = ("expert", "data")
# Gathering an expert weight for a full checkpoint takes two all-gathers (over data, then expert), and DTensor
# warns about it on every rank at every checkpoint; a checkpoint's gather is not the hot path.
logging.getLogger("torch.distributed.tensor._redistribute").setLevel(logging.ERROR)


def expert_data_mesh(device_type: str, expert: int, data: int) -> DeviceMesh:
    """The ``(expert, data)`` mesh over the process group's ``expert * data`` ranks."""
    return init_device_mesh(device_type, (expert, data), mesh_dim_names=MESH_DIMS)


def shard_model(model: nn.Module, mesh: DeviceMesh) -> nn.Module:
    """Shard ``model`` (already on the mesh's device) in place: experts over ``expert`` then ``data``, every other
    module that owns parameters, and the root, under HSDP over the mesh."""
    layers = moe_layers(model)
    if not layers:
        raise ValueError("train.strategy expert_parallel needs a model with Mixture-of-Experts layers "
                         "(model.name: moe)")
    experts = set()
    for layer in layers:
        for name, parameter in list(layer.experts.named_parameters(recurse=False)):
            sharded = distribute_tensor(parameter.detach(), mesh["expert"], [Shard(0)])
            layer.experts.register_parameter(name, nn.Parameter(sharded, requires_grad=parameter.requires_grad))
        layer.shard_experts(mesh["expert"].get_group())
        fully_shard(layer.experts, mesh=mesh["data"])
        experts.add(layer.experts)
    return shard_parameter_owners(model, mesh, skip=experts)



class ExpertParallel(FullyShardedDataParallel):
    """Experts split over ``expert`` (tokens reach them by ``all_to_all``), everything sharded by FSDP2 over
    ``data``. Checkpoints are sharded, as FSDP's are."""

    name = "expert_parallel"

    def __init__(self, mesh: MeshSpec) -> None:
        self.mesh = mesh

    @classmethod
    def from_spec(cls, spec: TrainSpec) -> ExpertParallel:
        return cls(spec.device_mesh)

    def wrap(self, model: nn.Module) -> nn.Module:
        device = ray.train.torch.get_device()
        return shard_model(model.to(device), expert_data_mesh(device.type, self.mesh.expert, self.mesh.data))

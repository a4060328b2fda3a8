"""Per-epoch routing metrics of a model's Mixture-of-Experts layers: the auxiliary loss the loop adds to the
task loss, and each expert's load, the drop rate and the imbalance, summed over the epoch and all workers."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from rayline.models.moe import moe_layers


class RoutingMeter:
    """Collects every training batch's routing from the model's MoE layers (none: it does nothing)."""

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        self._layers = moe_layers(model)
        self._load = [torch.zeros(layer.num_experts, dtype=torch.float64, device=device) for layer in self._layers]
        self._totals = torch.zeros(len(self._layers) + 2, dtype=torch.float64, device=device)  # drops, aux, batches

    def aux_loss(self) -> torch.Tensor | float:
        """The auxiliary loss of the forward pass just run (0 without MoE layers); records its routing."""
        if not self._layers:
            return 0.0
        losses = []
        for index, layer in enumerate(self._layers):
            routing = layer.routing
            self._load[index] += routing.load
            self._totals[index] += routing.dropped
            losses.append(routing.aux_loss)
        aux = torch.stack(losses).sum()
        self._totals[-2] += aux.detach().double()
        self._totals[-1] += 1
        return aux

    def result(self) -> dict[str, float]:
        """``train_aux_loss`` (mean per batch) and, for layer ``l``: ``moe{l}_expert{e}_load`` (its share of the
        assignments), ``moe{l}_drop_rate`` (assignments dropped at capacity) and ``moe{l}_imbalance`` (the
        busiest expert's load over the mean load: 1 is even)."""
        if not self._layers:
            return {}
        packed = torch.cat([*self._load, self._totals])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(packed)
        metrics = {"train_aux_loss": packed[-2].item() / max(packed[-1].item(), 1.0)}
        offset, drops = 0, packed[sum(layer.num_experts for layer in self._layers):]
        for index, layer in enumerate(self._layers):
            load = packed[offset:offset + layer.num_experts]
            offset += layer.num_experts
            assignments = max(load.sum().item(), 1.0)
            metrics.update({f"moe{index}_expert{expert}_load": share
                            for expert, share in enumerate((load / assignments).tolist())})
            metrics[f"moe{index}_drop_rate"] = drops[index].item() / assignments
            metrics[f"moe{index}_imbalance"] = load.max().item() / (assignments / layer.num_experts)
        return metrics

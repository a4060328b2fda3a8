"""A sparsely-gated Mixture-of-Experts: top-k routing with a load-balancing loss, a capacity per expert and
token-drop accounting, and experts that can be sharded across workers (expert parallelism).

Each token goes to its ``top_k`` highest-scoring experts, weighted by their renormalised router probabilities.
While training, an expert takes at most ``capacity = ceil(capacity_factor * tokens * top_k / num_experts)``
tokens per batch: first choices are placed before second choices, and assignments past an expert's capacity
are dropped (the token keeps its residual path). Evaluating, nothing is dropped, so that a prediction does not
depend on the other rows of its batch. The auxiliary loss is the Switch Transformer's
``num_experts * sum_e f_e * P_e`` (``f_e`` the share of assignments expert ``e`` got, ``P_e`` its mean router
probability), times ``aux_loss_weight``: it is smallest when the load is even.

Experts are stacked weights, so grouped dispatch runs every expert in one batched matmul over an
``(experts, capacity, dim)`` buffer. With expert parallelism (:meth:`MoELayer.shard_experts`) each worker holds
``num_experts / group_size`` experts; the buffer goes to the experts' owners and back with two ``all_to_all``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

Dispatch = Literal["grouped", "naive"]


@dataclass
class Routing:
    """One forward's routing: assignments each expert was asked to take (``load``), assignments dropped at
    capacity, and the auxiliary loss (differentiable)."""

    load: torch.Tensor
    dropped: torch.Tensor
    aux_loss: torch.Tensor


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; the gradient is multiplied by ``scale`` (an expert's weights get gradients from every
    worker of its group: the scale keeps them the mean over workers, as data parallelism's are)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.scale, None


def _local(weight: torch.Tensor) -> torch.Tensor:
    """This worker's experts of a stacked weight (a DTensor sharded on the expert dimension, or a plain one)."""
    return weight.to_local() if hasattr(weight, "to_local") else weight


class Experts(nn.Module):
    """``num_experts`` two-layer feed-forward networks as stacked weights."""

    def __init__(self, num_experts: int, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(num_experts, dim, hidden))
        self.b1 = nn.Parameter(torch.zeros(num_experts, hidden))
        self.w2 = nn.Parameter(torch.empty(num_experts, hidden, dim))
        self.b2 = nn.Parameter(torch.zeros(num_experts, dim))
        for weight, fan_in in ((self.w1, dim), (self.w2, hidden)):
            nn.init.uniform_(weight, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))
        self.grad_scale = 1.0

    def _weights(self) -> tuple[torch.Tensor, ...]:
        weights = tuple(_local(weight) for weight in (self.w1, self.b1, self.w2, self.b2))
        if self.grad_scale != 1.0:
            weights = tuple(_ScaleGrad.apply(weight, self.grad_scale) for weight in weights)
        return weights

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(local experts, slots, dim)`` → the same shape: every local expert on its slots, batched."""
        w1, b1, w2, b2 = self._weights()
        hidden = F.relu(torch.baddbmm(b1.unsqueeze(1).to(tokens.dtype), tokens, w1.to(tokens.dtype)))
        return torch.baddbmm(b2.unsqueeze(1).to(tokens.dtype), hidden, w2.to(tokens.dtype))

    def one(self, expert: int, tokens: torch.Tensor) -> torch.Tensor:
        """``(rows, dim)`` through expert ``expert`` alone."""
        w1, b1, w2, b2 = self._weights()
        return F.relu(tokens @ w1[expert] + b1[expert]) @ w2[expert] + b2[expert]


class MoELayer(nn.Module):
    """A top-k Mixture-of-Experts feed-forward layer: ``(tokens, dim)`` → ``(tokens, dim)``.

    After each forward, :attr:`routing` holds that batch's expert load, drops and auxiliary loss."""

    def __init__(self, dim: int, hidden: int, num_experts: int = 4, top_k: int = 2, capacity_factor: float = 1.25,
                 aux_loss_weight: float = 0.01, dispatch: Dispatch = "grouped") -> None:
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must be between 1 and num_experts ({num_experts}), got {top_k}")
        if capacity_factor <= 0:
            raise ValueError(f"capacity_factor must be positive, got {capacity_factor}")
        if dispatch not in ("grouped", "naive"):
            raise ValueError(f"dispatch must be 'grouped' or 'naive', got {dispatch!r}")
        self.num_experts, self.top_k, self.capacity_factor = num_experts, top_k, capacity_factor
        self.aux_loss_weight, self.dispatch = aux_loss_weight, dispatch
        self.router = nn.Linear(dim, num_experts, bias=False)
        self.experts = Experts(num_experts, dim, hidden)
        self.expert_group: dist.ProcessGroup | None = None
        self.routing: Routing | None = None

    def shard_experts(self, group: dist.ProcessGroup) -> None:
        """Run with expert parallelism over ``group``: the caller has left this worker's
        ``num_experts / group size`` experts in :attr:`experts` (DTensors sharded on dimension 0)."""
        size = dist.get_world_size(group)
        if self.num_experts % size:
            raise ValueError(f"num_experts ({self.num_experts}) must be a multiple of the expert-parallel group "
                             f"size ({size})")
        if self.dispatch != "grouped":
            raise ValueError("expert parallelism needs dispatch: grouped")
        self.expert_group = group
        self.experts.grad_scale = 1.0 / size

    def capacity(self, tokens: int) -> int:
        """Slots per expert for a batch of ``tokens`` tokens."""
        return max(1, math.ceil(self.capacity_factor * tokens * self.top_k / self.num_experts))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        count, experts = tokens.shape[0], self.num_experts
        probs = torch.softmax(self.router(tokens).float(), dim=-1)
        top_probs, top_experts = probs.topk(self.top_k, dim=-1)
        gates = (top_probs / top_probs.sum(-1, keepdim=True)).to(tokens.dtype)
        # assignments in priority order: every token's first choice, then every second choice, ...
        expert_of = top_experts.t().reshape(-1)
        token_of = torch.arange(count, device=tokens.device).repeat(self.top_k)
        gate_of = gates.t().reshape(-1)
        slot_of = (F.one_hot(expert_of, experts).cumsum(0) - 1).gather(1, expert_of[:, None]).squeeze(1)
        # evaluating, every assignment fits (a token picks an expert once): a prediction must not depend on the
        # other rows of its batch
        capacity = self.capacity(self._group_max(count)) if self.training else self._group_max(count)
        kept = slot_of < capacity
        load = torch.bincount(expert_of, minlength=experts)
        share = load.float() / max(expert_of.numel(), 1)
        aux = self.aux_loss_weight * experts * (share * probs.mean(0)).sum()
        self.routing = Routing(load.detach(), (~kept).sum().detach(), aux)

        expert_of, token_of, gate_of, slot_of = expert_of[kept], token_of[kept], gate_of[kept], slot_of[kept]
        if self.dispatch == "naive":
            outputs = torch.cat([self.experts.one(expert, tokens[token_of[expert_of == expert]])
                                 for expert in range(experts)])
            order = torch.cat([(expert_of == expert).nonzero().squeeze(1) for expert in range(experts)])
            token_of, gate_of = token_of[order], gate_of[order]
        else:
            buffer = tokens.new_zeros(experts, capacity, tokens.shape[1])
            buffer[expert_of, slot_of] = tokens[token_of]
            outputs = self._run_experts(buffer)[expert_of, slot_of]
        return tokens.new_zeros(tokens.shape).index_add(0, token_of, outputs * gate_of[:, None])

    def _group_max(self, count: int) -> int:
        """The most tokens any worker of the expert group has: every worker must use the same capacity."""
        if self.expert_group is None:
            return count
        most = torch.tensor([count], device=self.router.weight.device)
        dist.all_reduce(most, op=dist.ReduceOp.MAX, group=self.expert_group)
        return int(most.item())

    def _run_experts(self, buffer: torch.Tensor) -> torch.Tensor:
        """``(experts, capacity, dim)`` through the experts, wherever they live."""
        if self.expert_group is None:
            return self.experts(buffer)
        from torch.distributed._functional_collectives import all_to_all_single_autograd

        size = dist.get_world_size(self.expert_group)
        experts, capacity, dim = buffer.shape
        local = experts // size
        # rank r owns experts [r*local, (r+1)*local): the buffer's chunk r goes to rank r; each rank gets
        # (source, local, capacity, dim) and runs its experts over every source's slots at once
        received = all_to_all_single_autograd(buffer.contiguous(), None, None, self.expert_group)
        grouped = received.view(size, local, capacity, dim).transpose(0, 1).reshape(local, size * capacity, dim)
        done = self.experts(grouped).view(local, size, capacity, dim).transpose(0, 1).reshape(experts, capacity, dim)
        return all_to_all_single_autograd(done.contiguous(), None, None, self.expert_group)


class MoEMLP(nn.Module):
    """A tabular network with Mixture-of-Experts blocks: an input projection, ``layers`` residual blocks
    ``x + moe(layer_norm(x))`` and a linear head."""

    def __init__(self, num_features: int, num_outputs: int, dim: int = 64, hidden: int = 128, layers: int = 1,
                 num_experts: int = 4, top_k: int = 2, capacity_factor: float = 1.25, aux_loss_weight: float = 0.01,
                 dispatch: Dispatch = "grouped") -> None:
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(num_features, dim), nn.ReLU())
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(layers))
        self.moes = nn.ModuleList(MoELayer(dim, hidden, num_experts, top_k, capacity_factor, aux_loss_weight,
                                           dispatch) for _ in range(layers))
        self.head = nn.Linear(dim, num_outputs)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        hidden = self.embed(features)
        for norm, moe in zip(self.norms, self.moes, strict=True):
            hidden = hidden + moe(norm(hidden))
        return self.head(hidden)


def moe_layers(model: nn.Module) -> list[MoELayer]:
    """The Mixture-of-Experts layers inside ``model``, in order."""
    return [module for module in model.modules() if isinstance(module, MoELayer)]

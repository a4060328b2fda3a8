"""The optimizer step of the train loop: mixed precision and gradient accumulation (``train.precision``,
``train.grad_accum_steps``)."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

from rayline.spec import TrainSpec

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Stepper:
    """Backward passes whose gradients add up over ``grad_accum_steps`` batches before each optimizer step, with
    the forward pass under autocast (bf16; fp16 with a gradient scaler, on GPU)."""

    def __init__(self, spec: TrainSpec, optimizer: torch.optim.Optimizer, device: torch.device) -> None:
        self._optimizer = optimizer
        self._device = device
        self._dtype = DTYPES.get(spec.precision)
        self._accumulate = spec.grad_accum_steps
        self._pending = 0
        self._scaler = torch.amp.GradScaler(device.type) if spec.precision == "fp16" else None

    def autocast(self) -> AbstractContextManager:
        """The forward pass's precision."""
        if self._dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self._device.type, dtype=self._dtype)

    def backward(self, loss: torch.Tensor) -> None:
        """Add this batch's gradients (as a share of the accumulated batches); step when enough have added up."""
        scaled = loss / self._accumulate
        (self._scaler.scale(scaled) if self._scaler else scaled).backward()
        self._pending += 1
        if self._pending == self._accumulate:
            self.flush()

    def flush(self) -> None:
        """Step on the gradients added up so far. The end of an epoch steps on a partial accumulation, scaled up
        to the mean over the batches it holds (as the step of an unaccumulated batch is)."""
        if not self._pending:
            return
        if self._pending < self._accumulate:
            with torch.no_grad():
                for group in self._optimizer.param_groups:
                    for parameter in group["params"]:
                        if parameter.grad is not None:
                            parameter.grad.mul_(self._accumulate / self._pending)
        if self._scaler:
            self._scaler.step(self._optimizer)
            self._scaler.update()
        else:
            self._optimizer.step()
        self._optimizer.zero_grad(set_to_none=True)
        self._pending = 0

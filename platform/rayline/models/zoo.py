"""Built-in models. Each takes a flat float feature tensor (batch, num_features)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


class MLP(nn.Module):
    """A feed-forward network for tabular features."""

    def __init__(
        self, num_features: int, num_outputs: int, hidden: Sequence[int] = (64, 64), dropout: float = 0.0
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = num_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = size
        layers.append(nn.Linear(width, num_outputs))
        self.net = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


class CNN(nn.Module):
    """A small convolutional network for images given as flat pixel columns (digits are 1x8x8)."""

    def __init__(
        self,
        num_features: int,
        num_outputs: int,
        input_shape: Sequence[int] = (1, 8, 8),
        channels: Sequence[int] = (16, 32),
        hidden: int = 64,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if math.prod(input_shape) != num_features:
            raise ValueError(
                f"input_shape {list(input_shape)} holds {math.prod(input_shape)} values "
                f"but the data has {num_features} features"
            )
        self.input_shape = tuple(input_shape)
        layers: list[nn.Module] = []
        in_channels = input_shape[0]
        for out_channels in channels:
            layers += [nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU()]
            in_channels = out_channels
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.head = nn.Sequential(
            nn.Linear(in_channels * 4, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, num_outputs)
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        images = features.reshape(features.shape[0], *self.input_shape)
        return self.head(self.features(images))

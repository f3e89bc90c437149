"""Small building blocks shared by the split models."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class Normalize(nn.Module):
    """Per-channel standardisation as the encoder's first layer.

    Keeping it inside the model means every image handed around (data loaders, attacks,
    reconstruction metrics) stays in [0, 1] pixel space, the space the paper measures MSE in.
    """

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


def conv_bn(in_channels: int, out_channels: int, *, relu: bool = True, stride: int = 1) -> nn.Sequential:
    """3x3 convolution + batch norm (+ ReLU), the unit VGG and the bottleneck are built from."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1),
        nn.BatchNorm2d(out_channels),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def bottleneck_layers(in_channels: int, channels: int, sigmoid: bool) -> list[nn.Module]:
    """Encoder-side bottleneck: a 3x3 conv down to ``channels`` with batch norm and no ReLU.

    The paper (section 5.1, after ResSFL [29]) adds an 8-channel bottleneck at the encoder
    output of every compared method; without a ReLU the features keep their sign, which is
    what ResSFL's ``noRELU_C8S1`` option does.
    """
    layers: list[nn.Module] = list(conv_bn(in_channels, channels, relu=False))
    if sigmoid:
        layers.append(nn.Sigmoid())
    return layers


def group_norm_in_place_of_batch_norm(module: nn.Module) -> nn.Module:
    """``module`` with every ``BatchNorm2d`` replaced by a ``GroupNorm`` of the same channels.

    Batch norm normalises a batch by its own statistics in training and by running averages at
    evaluation. A federated client's batch holds its own skewed mix of classes, so its encoder
    trains on features normalised by per-client statistics that evaluation never uses; group
    norm (Wu and He, ECCV 2018; proposed for label-skewed federated learning by Hsieh et al.,
    ICML 2020) normalises each image on its own. Groups: 32 as Wu and He, at least two
    channels each (the 8-channel bottleneck gets 4). The new layers start at weight 1, bias 0,
    as batch norm does, and draw no random numbers, so the rest of the model initialises alike.
    """
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            channels = child.num_features
            setattr(module, name, nn.GroupNorm(math.gcd(32, max(1, channels // 2)), channels))
        else:
            group_norm_in_place_of_batch_norm(child)
    return module

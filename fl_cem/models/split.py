"""Builds the client encoder and server decoder for a config, and measures their cost."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fl_cem.config import ModelConfig
from fl_cem.models.layers import group_norm_in_place_of_batch_norm
from fl_cem.models.resnet import resnet20_split
from fl_cem.models.vgg import vgg11_split

_BUILDERS = {"vgg11": vgg11_split, "resnet20": resnet20_split}


@dataclass
class SplitModel:
    """The two halves of a split network and the shape of what crosses the wire."""

    encoder: nn.Sequential
    decoder: nn.Sequential
    input_shape: tuple[int, int, int]
    smashed_shape: tuple[int, int, int]


def build_split_model(
    cfg: ModelConfig,
    input_shape: tuple[int, int, int],
    num_classes: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> SplitModel:
    """Encoder and decoder for ``cfg`` adapted to the data's channels, size and classes.

    Initialisation uses the global torch RNG: seed it first for a reproducible model.
    """
    channels, height, width = input_shape
    if height != width:
        raise ValueError(f"models expect square images; got {height}x{width} (set data.image-size)")
    widths = {"decoder_width": cfg.decoder_width} if cfg.decoder_width != 1.0 else {}
    encoder, decoder = _BUILDERS[cfg.arch](
        channels,
        height,
        num_classes,
        cut=cfg.cut,
        bottleneck=cfg.bottleneck,
        sigmoid=cfg.sigmoid,
        mean=mean,
        std=std,
        **widths,
    )
    if cfg.encoder_norm == "group":
        encoder = group_norm_in_place_of_batch_norm(encoder)
    with torch.no_grad():
        smashed = encoder.eval()(torch.zeros(1, *input_shape))
    encoder.train()
    return SplitModel(encoder, decoder, input_shape, tuple(smashed.shape[1:]))  # type: ignore[arg-type]


@dataclass(frozen=True)
class Complexity:
    """Parameter count and multiply-accumulates of one forward pass of one image."""

    params: int
    macs: int


def complexity(module: nn.Module, input_shape: tuple[int, ...]) -> Complexity:
    """Parameters and MACs of ``module`` on one input of ``input_shape`` (no batch dim).

    MACs count convolutions and linear layers, the terms that dominate and that the paper's
    Table 9 reports; batch norm, activations and pooling are left out.
    """
    macs = 0

    def count(layer: nn.Module, _inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal macs
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
            kernel = layer.kernel_size[0] * layer.kernel_size[1] * layer.in_channels // layer.groups
            if isinstance(layer, nn.ConvTranspose2d):
                macs += _inputs[0].numel() * layer.out_channels * layer.kernel_size[0] * layer.kernel_size[1] // layer.groups
            else:
                macs += output.numel() * kernel
        elif isinstance(layer, nn.Linear):
            macs += output.numel() * layer.in_features

    hooks = [m.register_forward_hook(count) for m in module.modules() if not list(m.children())]
    was_training = module.training
    try:
        with torch.no_grad():
            module.eval()(torch.zeros(1, *input_shape))
    finally:
        module.train(was_training)
        for hook in hooks:
            hook.remove()
    return Complexity(sum(p.numel() for p in module.parameters()), macs)

"""CIFAR-style VGG11 with batch norm, split between a client encoder and a server decoder.

After torchvision's ``vgg.py``: the architecture is the config list ``"A"`` and the split point
is an index into it. The head is CIFAR-sized (global average pool + one linear layer) instead of
ImageNet's 7x7 pool and 4096-wide classifier.
"""

from __future__ import annotations

from torch import nn

from fl_cem.models.layers import Normalize, bottleneck_layers, conv_bn

VGG11: list[int | str] = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]
"""torchvision's configuration "A": conv widths, with "M" for a 2x2 max-pool."""


def _cut_index(cut: int) -> int:
    """Index into VGG11 just past the ``cut``-th conv and the pool that directly follows it."""
    convs = 0
    for i, item in enumerate(VGG11):
        if item != "M":
            convs += 1
        if convs == cut:
            follows_pool = i + 1 < len(VGG11) and VGG11[i + 1] == "M"
            return i + 2 if follows_pool else i + 1
    raise ValueError(f"VGG11 has only {convs} conv layers; got cut={cut}")


def _make_layers(config: list[int | str], in_channels: int, size: int) -> tuple[list[nn.Module], int, int]:
    """Layers for ``config``; pools that would shrink the map below 1x1 are left out.

    That is how the same VGG11 adapts to 8x8 digits as well as 32x32 or 64x64 images.
    Returns the layers, the output channels and the output spatial size.
    """
    layers: list[nn.Module] = []
    for item in config:
        if item == "M":
            if size >= 2:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                size //= 2
        else:
            layers.extend(conv_bn(in_channels, int(item)))
            in_channels = int(item)
    return layers, in_channels, size


def vgg11_split(
    in_channels: int,
    image_size: int,
    num_classes: int,
    *,
    cut: int,
    bottleneck: int,
    sigmoid: bool,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    decoder_width: float = 1.0,
) -> tuple[nn.Sequential, nn.Sequential]:
    """Encoder and decoder of VGG11-BN split after conv layer ``cut`` (paper: c2).

    Parameters
    ----------
    cut
        Conv layers kept on the client (1-3). c2 = conv64, pool, conv128, pool.
    bottleneck
        Channels of the encoder-output bottleneck conv, mirrored by a conv back to the full width
        at the decoder input (paper: 8). 0 disables it.
    """
    index = _cut_index(cut)
    client_layers, width, size = _make_layers(VGG11[:index], in_channels, image_size)
    server_config = [item if item == "M" else max(1, round(int(item) * decoder_width)) for item in VGG11[index:]]
    server_layers, out_width, _ = _make_layers(server_config, width, size)

    encoder_layers: list[nn.Module] = [Normalize(mean, std), *client_layers]
    decoder_layers: list[nn.Module] = []
    if bottleneck:
        encoder_layers += bottleneck_layers(width, bottleneck, sigmoid)
        decoder_layers += list(conv_bn(bottleneck, width))
    elif sigmoid:
        encoder_layers.append(nn.Sigmoid())
    # ---- the cut: (B, bottleneck or width, size, size) crosses the wire here
    decoder_layers += [
        *server_layers,
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(out_width, num_classes),
    ]
    return nn.Sequential(*encoder_layers), nn.Sequential(*decoder_layers)

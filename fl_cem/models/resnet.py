"""ResNet-20 for CIFAR-sized images (He et al. 2016, section 4.2), split after ``cut`` blocks.

The paper (section 5.1) puts "the first four conv layers" of ResNet-20 on the client: the stem
conv and the first residual block (three convs) plus the bottleneck conv make four, so
``cut = 1`` with ``bottleneck = 8`` is the paper's split.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from fl_cem.models.layers import Normalize, bottleneck_layers, conv_bn

STAGES = (16, 32, 64)
BLOCKS_PER_STAGE = 3


class BasicBlock(nn.Module):
    """Two 3x3 convs with an identity (or 1x1 projection) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = conv_bn(in_channels, out_channels, stride=stride)
        self.conv2 = conv_bn(out_channels, out_channels, relu=False)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


def _blocks(in_channels: int, image_size: int) -> list[tuple[nn.Module, int, int]]:
    """All nine residual blocks with their output width and spatial size."""
    blocks = []
    size = image_size
    for stage, width in enumerate(STAGES):
        for i in range(BLOCKS_PER_STAGE):
            stride = 2 if stage > 0 and i == 0 and size >= 2 else 1
            size //= stride
            blocks.append((BasicBlock(in_channels, width, stride), width, size))
            in_channels = width
    return blocks


def resnet20_split(
    in_channels: int,
    image_size: int,
    num_classes: int,
    *,
    cut: int,
    bottleneck: int,
    sigmoid: bool,
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> tuple[nn.Sequential, nn.Sequential]:
    """Encoder (stem + ``cut`` residual blocks) and decoder (the rest) of ResNet-20."""
    blocks = _blocks(STAGES[0], image_size)
    _, width, _ = blocks[cut - 1]
    encoder_layers: list[nn.Module] = [Normalize(mean, std), *conv_bn(in_channels, STAGES[0])]
    encoder_layers += [block for block, _, _ in blocks[:cut]]
    decoder_layers: list[nn.Module] = []
    if bottleneck:
        encoder_layers += bottleneck_layers(width, bottleneck, sigmoid)
        decoder_layers += list(conv_bn(bottleneck, width))
    elif sigmoid:
        encoder_layers.append(nn.Sigmoid())
    # ---- the cut: (B, bottleneck or width, size, size) crosses the wire here
    decoder_layers += [block for block, _, _ in blocks[cut:]]
    decoder_layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(STAGES[-1], num_classes)]
    return nn.Sequential(*encoder_layers), nn.Sequential(*decoder_layers)

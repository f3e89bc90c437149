"""Networks of the learned inversion attacks: the decoding network, the GAN's critic and FORA's feature critic.

The decoding network follows the paper's supplement S.9 (Fig. 6), itself after ResSFL [29]:
a conv from the smashed channels to 64, eight 64-channel residual blocks, one transposed-conv
block per factor of two between the smashed and the image resolution, a final conv to the image
channels and a sigmoid, so reconstructions live in [0, 1] pixel space like the images.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

WIDTH = 64
"""Channels of every hidden layer of the decoding network (paper S.9)."""
RESIDUAL_BLOCKS = 8
"""Residual blocks of the decoding network (paper S.9)."""


class ResidualBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity shortcut (He et al. 2016, basic block)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(x + self.body(x))


def upsampling_steps(input_size: int, smashed_size: int) -> int:
    """Number of x2 transposed-conv blocks taking ``smashed_size`` to ``input_size`` (log2 of the ratio).

    Parameters
    ----------
    input_size : int
        Height (= width) of the images.
    smashed_size : int
        Height (= width) of the smashed data.

    Returns
    -------
    int
        ``log2(input_size / smashed_size)``; 0 when the encoder did not downsample.
    """
    ratio = input_size / smashed_size
    steps = round(math.log2(ratio)) if ratio >= 1 else -1
    if steps < 0 or smashed_size * 2**steps != input_size:
        raise ValueError(
            f"the decoding network upsamples by powers of two; cannot map smashed size {smashed_size} "
            f"to image size {input_size}"
        )
    return steps


def decoding_network(
    smashed_shape: tuple[int, int, int],
    input_shape: tuple[int, int, int],
    width: int = WIDTH,
    blocks: int = RESIDUAL_BLOCKS,
) -> nn.Sequential:
    """The inversion network of paper S.9: smashed data (B, c, h, w) -> images (B, C, H, W) in [0, 1].

    Parameters
    ----------
    smashed_shape : tuple[int, int, int]
        ``(c, h, w)`` of the smashed data, e.g. ``(8, 8, 8)`` for VGG11 cut after conv 2 with the
        8-channel bottleneck.
    input_shape : tuple[int, int, int]
        ``(C, H, W)`` of the images, e.g. ``(3, 32, 32)``.
    width : int
        Hidden channels (paper: 64).
    blocks : int
        Residual blocks (paper: 8).

    Returns
    -------
    nn.Sequential
        The network; 672.5k parameters at the paper's CIFAR shapes (8x8x8 -> 3x32x32). The paper
        reports 711.54k: the authors' code makes the first and the last layer residual blocks
        with 1x1 projection shortcuts instead of the plain convs used here.
    """
    smashed_channels, smashed_h, smashed_w = smashed_shape
    image_channels, image_h, image_w = input_shape
    steps = upsampling_steps(image_h, smashed_h)
    if upsampling_steps(image_w, smashed_w) != steps:
        raise ValueError(f"smashed shape {smashed_shape} and image shape {input_shape} differ in aspect ratio")
    layers: list[nn.Module] = [
        nn.Conv2d(smashed_channels, width, 3, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
    ]
    layers += [ResidualBlock(width) for _ in range(blocks)]
    for _ in range(steps):
        # output_padding=1 makes the output exactly twice the input size for kernel 3, stride 2
        layers += [
            nn.ConvTranspose2d(width, width, 3, stride=2, padding=1, output_padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        ]
    layers += [nn.Conv2d(width, image_channels, 3, padding=1), nn.Sigmoid()]
    return nn.Sequential(*layers)


HIRES_BLOCKS = 2
"""Residual blocks of :func:`hires_decoding_network`, at image resolution (16x the pixels of 8x8 smashed data)."""


def hires_decoding_network(smashed_shape: tuple[int, int, int], input_shape: tuple[int, int, int], width: int = WIDTH, blocks: int = HIRES_BLOCKS) -> nn.Sequential:
    """A second inversion architecture to test S.9's against: upsample first, then refine at image resolution.

    S.9's network does its residual work on the small smashed map and only then upsamples, so
    fine detail must be carried through transposed convs; this one upsamples right away and
    spends its residual blocks on the full-size image, where edges live (as U-Net-style and
    super-resolution decoders do). Same width; ``blocks`` at 32x32 cost about ``2 * blocks``
    S.9 blocks at 8x8.
    """
    smashed_channels, smashed_h, smashed_w = smashed_shape
    image_channels, image_h, image_w = input_shape
    steps = upsampling_steps(image_h, smashed_h)
    if upsampling_steps(image_w, smashed_w) != steps:
        raise ValueError(f"smashed shape {smashed_shape} and image shape {input_shape} differ in aspect ratio")
    layers: list[nn.Module] = [nn.Conv2d(smashed_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
    for _ in range(steps):
        layers += [nn.ConvTranspose2d(width, width, 3, stride=2, padding=1, output_padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
    layers += [ResidualBlock(width) for _ in range(blocks)]
    layers += [nn.Conv2d(width, image_channels, 3, padding=1), nn.Sigmoid()]
    return nn.Sequential(*layers)


INVERSION_NETWORKS = {"s9": decoding_network, "hires": hires_decoding_network}
"""``attack.network``: the decoding-based attacks' architecture by name."""


def critic(input_shape: tuple[int, int, int], width: int = WIDTH) -> nn.Sequential:
    """Real-vs-reconstructed critic of the GAN attack: strided convs down to 4x4, then one linear score.

    No batch norm: the WGAN-GP gradient penalty (Gulrajani et al. 2017) is taken per sample,
    which batch statistics would break; Zhang et al.'s critic avoids it for the same reason.

    Parameters
    ----------
    input_shape : tuple[int, int, int]
        ``(C, H, W)`` of the images.
    width : int
        Channels of the first conv; doubled at each downsampling up to ``4 * width``.

    Returns
    -------
    nn.Sequential
        Maps images (B, C, H, W) to unbounded scores (B,).
    """
    in_channels, height, width_px = input_shape
    out_channels = width
    layers: list[nn.Module] = []
    # downsample while the map is larger than 4x4, at least once (8x8 digits get one step)
    while True:
        layers += [nn.Conv2d(in_channels, out_channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        height, width_px = height // 2, width_px // 2
        in_channels, out_channels = out_channels, min(out_channels * 2, 4 * width)
        if max(height, width_px) <= 4:
            break
    layers += [nn.Flatten(), nn.Linear(in_channels * height * width_px, 1), nn.Flatten(0)]
    return nn.Sequential(*layers)


def feature_critic(smashed_shape: tuple[int, int, int], width: int = WIDTH) -> nn.Sequential:
    """Real-vs-substitute critic on smashed data, for FORA's adversarial feature matching.

    FORA (Xu et al. CVPR 2024) trains a discriminator to tell the victim's intercepted features
    from the substitute encoder's; this is the image critic's design on feature maps: a 3x3
    conv lifting the smashed channels to ``width`` (maps may be as small as 1x1), then strided
    convs while the map is larger than 4x4, then one linear score. No batch norm, for the
    per-sample gradient penalty (see :func:`critic`).

    Parameters
    ----------
    smashed_shape : tuple[int, int, int]
        ``(c, h, w)`` of the smashed data.
    width : int
        Channels after the first conv; doubled at each downsampling up to ``4 * width``.

    Returns
    -------
    nn.Sequential
        Maps smashed data (B, c, h, w) to unbounded scores (B,).
    """
    channels, height, width_px = smashed_shape
    layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1), nn.LeakyReLU(0.2, inplace=True)]
    in_channels = width
    while max(height, width_px) > 4:
        out_channels = min(in_channels * 2, 4 * width)
        layers += [nn.Conv2d(in_channels, out_channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        height, width_px, in_channels = height // 2, width_px // 2, out_channels
    layers += [nn.Flatten(), nn.Linear(in_channels * height * width_px, 1), nn.Flatten(0)]
    return nn.Sequential(*layers)

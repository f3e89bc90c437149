"""The client's public design, as a black-box attacker builds it (Kerckhoffs's principle).

A curious server in split learning knows the model code and the configuration the federation
agreed on (architecture, cut layer, bottleneck, noise level), never the client's trained
weights. FORA (Xu et al. CVPR 2024) and UnSplit (Erdogan et al. WPES 2022) assume exactly this.
The encoder is built here with the project's model code, as the client built its own, but with
weights drawn from whatever random state the attacker seeded, not from the run's seed. Defense
changes to the architecture (PATROL's deeper first conv) and the defense's transforms (dropout,
top-k, NoPeek's Laplacian noise) are not modelled: the substitute must learn to match them.
"""

from __future__ import annotations

import torch
from torch import nn

from fl_cem.attacks.base import PublicDesign
from fl_cem.config import Config
from fl_cem.models.split import build_split_model
from fl_cem.training.layout import model_format, place


def public_design(
    cfg: Config, input_shape: tuple[int, int, int], num_classes: int, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
) -> PublicDesign:
    """The encoder architecture of ``cfg.model`` (fresh weights on each call) and ``noise.sigma``.

    Parameters
    ----------
    cfg : Config
        The run's config, as the federation published it.
    input_shape : tuple[int, int, int]
        ``(C, H, W)`` of the images.
    num_classes : int
        Classes of the task (the model code needs them to build the decoder half, which is dropped).
    mean, std : tuple[float, ...]
        The per-channel normalisation the encoder starts with (public dataset statistics).
    device : torch.device
        Where the built encoders live, in the layout the client's would have.

    Returns
    -------
    PublicDesign
        What a black-box attack receives instead of the client's smashing function.
    """

    def encoder() -> nn.Module:
        model = build_split_model(cfg.model, input_shape, num_classes, mean, std)
        return place(model.encoder, device, model_format(device, input_shape))

    return PublicDesign(encoder, cfg.noise.sigma)

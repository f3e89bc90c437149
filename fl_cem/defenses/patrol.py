"""PATROL: privacy-oriented pruning (Ding et al., WACV 2024, paper ref. [7]).

PATROL puts more layers on the client, which extract more task-specific and less
reconstructable features, trains them attacker-aware, and prunes the deeper encoder so that it
costs the client no more than the original. The CEM paper (Sec. 5.1) "adjust[s] the pruning
ratio to ensure the encoder in PATROL remains the same size as other methods".

What this module implements, following the CEM authors' configuration of PATROL:

- the extra layer: the encoder's first conv ``C_in -> C`` becomes a ``C_in -> C/4`` conv-BN-ReLU
  followed by a ``C/4 -> C`` conv (their ``double_local_layer`` option);
- attacker-aware training against a simulated inversion network, exactly as :class:`ResSFL`
  (their ``gan_adv`` option, which PATROL's adversarial reconstruction training corresponds to);
- pruning after ``defense.prune-step`` client steps (0: before training) back to the original
  encoder's parameter count, exactly: parameters minus masked-out weights equals the unwrapped
  encoder's ``numel`` count, with tolerance 0.

Simplified: pruning is global unstructured magnitude pruning with masks
(``torch.nn.utils.prune``) over all conv weights, where PATROL and the CEM code prune channels
by Taylor importance; parameters match but inference MACs do not shrink. PATROL's Lipschitz
regularisation of the encoder is not implemented (the CEM code does not use it either).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.nn.utils import prune

from fl_cem.config import Config
from fl_cem.defenses.adversarial import ResSFL
from fl_cem.defenses.base import Shapes
from fl_cem.registry import register_defense


def parameter_count(module: nn.Module) -> int:
    """All parameter elements, masked or not."""
    return sum(p.numel() for p in module.parameters())


def effective_parameter_count(module: nn.Module) -> int:
    """Parameter elements minus the weights that pruning masks hold at zero.

    Parameters
    ----------
    module : nn.Module
        A model, possibly carrying ``torch.nn.utils.prune`` masks (``*_mask`` buffers).

    Returns
    -------
    int
        The size a deployed, sparsely stored model would have.
    """
    masked = sum(int((mask == 0).sum()) for name, mask in module.named_buffers() if name.endswith("_mask"))
    return parameter_count(module) - masked


def deepen_first_conv(encoder: nn.Sequential) -> nn.Sequential:
    """A copy of ``encoder`` whose first top-level conv ``C_in -> C`` is split into two layers.

    The new layers are ``conv3x3(C_in -> C/4) - BN - ReLU`` and a conv ``C/4 -> C`` with the
    original's kernel, stride and padding, so the output shape is unchanged. Initialisation
    draws from the global torch RNG; seed it first for reproducible weights.

    Parameters
    ----------
    encoder : nn.Sequential
        The client encoder; it is not modified.

    Returns
    -------
    nn.Sequential
        The deeper encoder.
    """
    if not isinstance(encoder, nn.Sequential):
        raise ValueError(f"patrol needs an nn.Sequential encoder; got {type(encoder).__name__}")
    layers = list(copy.deepcopy(encoder))
    index = next((i for i, layer in enumerate(layers) if isinstance(layer, nn.Conv2d)), None)
    if index is None:
        raise ValueError("patrol needs an encoder with a top-level nn.Conv2d to deepen")
    first = layers[index]
    assert isinstance(first, nn.Conv2d)
    width = max(1, first.out_channels // 4)
    extra = [nn.Conv2d(first.in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
    second = nn.Conv2d(
        width,
        first.out_channels,
        first.kernel_size,  # type: ignore[arg-type]
        stride=first.stride,  # type: ignore[arg-type]
        padding=first.padding,  # type: ignore[arg-type]
        dilation=first.dilation,  # type: ignore[arg-type]
        bias=first.bias is not None,
    )
    return nn.Sequential(*layers[:index], *extra, second, *layers[index + 1 :])


def magnitude_masks(weights: list[Tensor], remove: int) -> list[Tensor]:
    """Global magnitude pruning: 0/1 masks that zero exactly the ``remove`` smallest |w| overall."""
    magnitudes = torch.cat([w.detach().abs().flatten() for w in weights])
    keep = torch.zeros_like(magnitudes)
    keep[magnitudes.topk(magnitudes.numel() - remove).indices] = 1
    return [m.view_as(w) for m, w in zip(keep.split([w.numel() for w in weights]), weights)]


@register_defense("patrol")
class Patrol(ResSFL):
    """Deeper encoder + ResSFL-style attacker-aware training + pruning back to the original size."""

    def __init__(self, cfg: Config, shapes: Shapes) -> None:
        super().__init__(cfg, shapes)
        self.prune_step = cfg.defense.prune_step
        self.register_buffer("pruned", torch.zeros((), dtype=torch.bool))
        # the wrapped encoder's convs, referenced but not registered: the encoder owns them
        self.convs: list[nn.Conv2d] = []
        # parameters the deeper encoder has beyond the original: how many weights to prune
        self.excess = 0

    def wrap_encoder(self, encoder: nn.Module) -> nn.Module:
        """Deepen the encoder and give every conv a pruning mask (all ones until pruned).

        Masks exist from the start so the encoder's ``state_dict`` keys (``weight_orig``,
        ``weight_mask``) never change, and a checkpoint or federated message restores them.
        """
        target = parameter_count(encoder)
        with torch.random.fork_rng(devices=[]):
            # same seed on every client, so the new layers start identical across a federation
            torch.manual_seed(self.cfg.run.seed)
            deeper = deepen_first_conv(encoder)  # type: ignore[arg-type]
        self.convs = [m for m in deeper.modules() if isinstance(m, nn.Conv2d)]
        self.excess = parameter_count(deeper) - target
        prunable = sum(conv.weight.numel() for conv in self.convs)
        if not 0 < self.excess < prunable:
            raise ValueError(
                f"patrol cannot prune the deeper encoder ({parameter_count(deeper)} parameters, "
                f"{prunable} prunable) back to {target}; its first conv must widen by more than 3x"
            )
        for conv in self.convs:
            prune.identity(conv, "weight")
        if self.prune_step == 0:
            self.prune()
        return deeper

    def prune(self) -> None:
        """Zero the ``excess`` smallest-magnitude conv weights of the wrapped encoder."""
        if not self.convs:
            raise RuntimeError("patrol.prune() needs wrap_encoder() to have been called")
        masks = magnitude_masks([conv.weight_orig for conv in self.convs], self.excess)
        with torch.no_grad():
            for conv, mask in zip(self.convs, masks):
                conv.weight_mask.copy_(mask)
        self.pruned.fill_(True)

    def adversary_step(self, x: Tensor, z_hat: Tensor, z: Tensor) -> dict[str, Tensor]:
        """The adversary's step, then pruning once ``defense.prune-step`` client steps are done.

        The count rises by one per step, so it equals ``prune-step`` exactly once; a run resumed
        after that step restores ``pruned`` and the masks instead.
        """
        metrics = super().adversary_step(x, z_hat, z)
        if self.optimizer.count == self.prune_step:
            self.prune()
        return metrics

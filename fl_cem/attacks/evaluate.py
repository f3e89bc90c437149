"""Attack harness: which images the attacker learns from, which it is scored on, and one scored run.

The paper reports leakage of training data and of inference data (Sec. 5.1, "Evaluation
metrics"). Here both are measured on images the attacker never trained on, so a score is
generalisation of the inversion, not memorisation:

- ``train`` mode: the attacker learns from the training distribution (most of the training
  split) and is scored on a held-out share of the training split (``attack.holdout``);
- ``infer`` mode: it learns from one half of the test split and is scored on the other half.
"""

from __future__ import annotations

import math

from dataclasses import dataclass
from typing import overload

import torch
from torch import Tensor

from fl_cem.attacks.base import Attack, BlackBoxAttack, PublicDesign, SmashFn, WhiteBoxAttack
from fl_cem.attacks.common import EpochCallback, Stream, as_images, map_batches, seeded
from fl_cem.attacks.metrics import comparison_grid, mean_guess_mse, reconstruction_metrics
from fl_cem.registry import get_attack
from fl_cem.config import ATTACK_MODES, AttackConfig, Config


@dataclass(frozen=True)
class AttackSplits:
    """Index tensors into the named splits (``"train"`` or ``"test"``); ``aux`` and ``targets`` never overlap."""

    aux_split: str
    aux: Tensor
    target_split: str
    targets: Tensor


def attack_splits(mode: str, n_train: int, n_test: int, seed: int, holdout: float = 0.1) -> AttackSplits:
    """Seeded, disjoint auxiliary and target indices for an attack mode.

    Parameters
    ----------
    mode : str
        ``train``: auxiliary = the training split less a held-out share, targets = that share;
        ``infer``: auxiliary = a random half of the test split, targets = the other half.
    n_train, n_test : int
        Sizes of the training and test splits.
    seed : int
        Seed of the permutation, so every attack on a run scores the same images.
    holdout : float
        ``train`` mode: share of the training split kept as targets (``attack.holdout``).

    Returns
    -------
    AttackSplits
        Sorted index tensors (CPU, int64).
    """
    if mode not in ATTACK_MODES:
        raise ValueError(f"attack mode must be one of {', '.join(ATTACK_MODES)}; got {mode!r}")
    generator = torch.Generator().manual_seed(seed)
    if mode == "train":
        split, size = "train", n_train
        n_targets = max(1, round(holdout * size))
    else:
        split, size = "test", n_test
        n_targets = size - size // 2
    if size - n_targets < 1:
        raise ValueError(f"the {split} split has {size} images: too few to leave any for the attacker")
    order = torch.randperm(size, generator=generator)
    return AttackSplits(split, order[n_targets:].sort().values, split, order[:n_targets].sort().values)


def split_images(
    mode: str, train_images: Tensor, test_images: Tensor, seed: int, holdout: float = 0.1
) -> tuple[Tensor, Tensor]:
    """The auxiliary and the target images of :func:`attack_splits`, indexed out of the two splits.

    Returns
    -------
    tuple[Tensor, Tensor]
        ``(aux_images, target_images)``, in the dtype and on the device of the inputs.
    """
    splits = attack_splits(mode, len(train_images), len(test_images), seed, holdout)
    images = {"train": train_images, "test": test_images}
    aux = images[splits.aux_split][splits.aux.to(images[splits.aux_split].device)]
    targets = images[splits.target_split][splits.targets.to(images[splits.target_split].device)]
    return aux, targets


def split_aux(aux: Tensor, limit: int, seed: int) -> tuple[Tensor, Tensor]:
    """A seeded sample of at most ``limit`` auxiliary images (``limit`` 0: all of them), and the rest.

    The rest are images the client sent that the attacker does not hold: a black-box attacker
    intercepts their smashed data without the images (:func:`run_attack`'s ``intercepted_images``).

    Returns
    -------
    tuple[Tensor, Tensor]
        ``(kept, left_out)``, each in the original order; ``left_out`` is empty without a limit.
    """
    keep = torch.ones(len(aux), dtype=torch.bool)
    if limit and len(aux) > limit:
        keep[:] = False
        keep[torch.randperm(len(aux), generator=torch.Generator().manual_seed(seed + 7919))[:limit]] = True
    keep = keep.to(aux.device)
    return aux[keep], aux[~keep]


def limit_aux(aux: Tensor, limit: int, seed: int) -> Tensor:
    """The auxiliary images :func:`split_aux` keeps."""
    return split_aux(aux, limit, seed)[0]


REPEAT_STRIDE = 1000
"""Seeds between two repeats of an attack (``attack.seed``): far apart, so no repeat of one run
shares its streams with an attack on a neighbouring ``run.seed``."""


def attacker_seed(cfg: Config) -> int:
    """Seed of the attacker's own randomness: the run's, moved by the repeat (``attack.seed``).

    Targets and auxiliary images are drawn with ``run.seed`` alone, so every repeat is scored on
    the same images and repeat 0 is the attack as it always ran.
    """
    return cfg.run.seed + REPEAT_STRIDE * cfg.attack.seed


def repeat_tag(cfg: Config) -> str:
    """Suffix of a repeat's grid and TensorBoard names (none for repeat 0, as before repeats existed)."""
    return f"_repeat{cfg.attack.seed}" if cfg.attack.seed else ""


@overload
def make_attack(
    cfg: AttackConfig, access: PublicDesign, input_shape: tuple[int, int, int], smashed_shape: tuple[int, int, int], device: torch.device, seed: int = 0
) -> BlackBoxAttack: ...


@overload
def make_attack(
    cfg: AttackConfig, access: SmashFn, input_shape: tuple[int, int, int], smashed_shape: tuple[int, int, int], device: torch.device, seed: int = 0
) -> WhiteBoxAttack: ...


def make_attack(
    cfg: AttackConfig,
    access: SmashFn | PublicDesign,
    input_shape: tuple[int, int, int],
    smashed_shape: tuple[int, int, int],
    device: torch.device,
    seed: int = 0,
) -> Attack:
    """The attack ``cfg.name`` from the registry, built for the given shapes and device.

    ``access`` is what the attacker knows of the client: its smashing function for a white-box
    attack, its :class:`PublicDesign` for a black-box one. Handing a black-box attack the
    smashing function is refused here, so no black-box figure can come from the client's weights.
    """
    cls = get_attack(cfg.name)
    if issubclass(cls, BlackBoxAttack) != isinstance(access, PublicDesign):
        wanted = "the client's PublicDesign" if issubclass(cls, BlackBoxAttack) else "the client's smashing function"
        raise TypeError(f"attack {cfg.name!r} is {cls.threat}: it takes {wanted}, got {type(access).__name__}")
    return cls(cfg, access, input_shape, smashed_shape, device, seed)  # type: ignore[call-arg, arg-type]


MEAN_IMAGE_MARGIN = 0.9
"""An attack succeeds only with an MSE below this share of the mean image's: guessing the
attacker's mean image needs no smashed data at all, so an attack that does not beat it by 10 %
measured nothing about the defense and is reported as failed, not as protection."""


def beats_mean_image(metrics: dict[str, float]) -> bool:
    """Whether an attack's reconstructions beat the no-information baseline by :data:`MEAN_IMAGE_MARGIN`."""
    ratio = metrics.get("mse_to_mean_image", math.nan)
    return bool(ratio < MEAN_IMAGE_MARGIN)


@dataclass(frozen=True)
class AttackResult:
    """Scores of one attack run and a few reconstructions to look at."""

    metrics: dict[str, float]
    """On the targets: ``mse``, ``psnr``, ``ssim`` and ``mse_mean_guess`` (the no-information baseline)."""
    fit_metrics: dict[str, float]
    """The attack's final training metrics (empty for ``rmle``)."""
    scored: int
    """How many targets were reconstructed and scored (fewer than offered when the attack caps them)."""
    intercepted: int
    """Rows of intercepted smashed data a black-box attack fitted on (the scored targets' and
    :attr:`BlackBoxAttack.fits_intercepted` attacks' further rows); 0 for a white-box attack."""
    originals: Tensor
    """The first targets (CPU, [0, 1])."""
    reconstructions: Tensor
    """Their reconstructions (CPU, [0, 1])."""

    def grid(self, n: int = 8) -> Tensor:
        """Originals above reconstructions, (3, H', W'), for TensorBoard's ``add_image`` or a PNG."""
        return comparison_grid(self.originals, self.reconstructions, n)


def run_attack(
    attack: Attack,
    aux_images: Tensor,
    target_images: Tensor,
    target_z: Tensor | None = None,
    on_epoch: EpochCallback | None = None,
    keep: int = 16,
    wire: SmashFn | None = None,
    intercepted_images: Tensor | None = None,
    intercepted_z: Tensor | None = None,
) -> AttackResult:
    """Fit ``attack`` on the auxiliary images, reconstruct the targets and score the reconstructions.

    Parameters
    ----------
    attack : Attack
        A freshly built attack (see :func:`make_attack`).
    aux_images : Tensor
        The attacker's images (N, C, H, W), float in [0, 1] or uint8.
    target_images : Tensor
        The images whose leakage is measured; never in ``aux_images``. An attack with
        :attr:`Attack.max_targets` scores the first that many.
    target_z : Tensor, optional
        Smashed data of ``target_images`` as recorded on the wire (federated path), row for row.
        When omitted, the targets are put on the wire here, noise included: by a white-box
        attack's own smashing function, or by ``wire`` for a black-box attack.
    on_epoch : callable, optional
        Passed to the attack's ``fit`` for progress bars and TensorBoard.
    keep : int
        How many targets and reconstructions to keep for grids.
    wire : callable, optional
        The client's smashing function, standing in for the client that sends the targets'
        smashed data; only this harness calls it, a black-box attack sees only its output.
    intercepted_images, intercepted_z : Tensor, optional
        Black-box attacks only: further images the client sent, outside ``aux_images`` and the
        targets, whose smashed data a curious server intercepts without the images (put on the
        wire here by ``wire``), or such smashed data as recorded. An attack with
        :attr:`BlackBoxAttack.fits_intercepted` fits on them with the targets' rows; none is scored.

    Returns
    -------
    AttackResult
        Metrics on all scored targets and the first ``keep`` image pairs.
    """
    device = attack.device
    aux = as_images(aux_images, device)
    targets = as_images(target_images, device)
    if target_z is not None and len(target_z) != len(targets):
        raise ValueError(f"target_z has {len(target_z)} rows but there are {len(targets)} target images")
    if attack.max_targets:
        targets = targets[: attack.max_targets]
        target_z = None if target_z is None else target_z[: attack.max_targets]
    if isinstance(attack, BlackBoxAttack):
        if intercepted_images is not None and intercepted_z is not None:
            raise ValueError("pass intercepted_images or intercepted_z, not both")
        if not attack.fits_intercepted:
            intercepted_images = intercepted_z = None
        if intercepted_images is not None and not len(intercepted_images):
            intercepted_images = None  # nothing beyond the targets was sent (no aux-limit)
        # one seeded pass, targets first: their noise draws do not depend on what else is sent
        unsent = ([targets] if target_z is None else []) + ([intercepted_images] if intercepted_images is not None else [])
        if unsent and wire is None:
            raise ValueError(f"black-box attack {attack.name!r} needs the targets' smashed data: pass target_z or wire")
        sent = _on_the_wire(wire, attack, *unsent) if wire is not None and unsent else []
        target_z = sent.pop(0) if target_z is None else target_z
        intercepted_z = sent.pop(0) if intercepted_images is not None else intercepted_z
        further = None if intercepted_z is None else intercepted_z.to(device).float()
        fit_metrics = attack.fit(aux, target_z.to(device).float(), on_epoch, further)
        intercepted = len(target_z) + (0 if further is None else len(further))
    elif isinstance(attack, WhiteBoxAttack):
        if intercepted_images is not None or intercepted_z is not None:
            raise ValueError(f"white-box attack {attack.name!r} smashes its own images: intercepted data is for black-box attacks")
        fit_metrics = attack.fit(aux, on_epoch)
        if target_z is None:
            target_z = _on_the_wire(attack.smash, attack, targets)[0]
        intercepted = 0
    else:
        raise TypeError(f"attack {attack.name!r} is neither a WhiteBoxAttack nor a BlackBoxAttack")
    reconstructions = attack.invert(target_z)
    metrics = reconstruction_metrics(reconstructions, targets)
    metrics["mse_mean_guess"] = mean_guess_mse(aux, targets)
    metrics["mse_to_mean_image"] = metrics["mse"] / metrics["mse_mean_guess"] if metrics["mse_mean_guess"] > 0 else math.nan
    return AttackResult(
        metrics=metrics,
        fit_metrics=fit_metrics,
        scored=len(targets),
        intercepted=intercepted,
        originals=targets[:keep].cpu(),
        reconstructions=reconstructions[:keep].cpu(),
    )


def _on_the_wire(smash: SmashFn, attack: Attack, *images: Tensor) -> list[Tensor]:
    """Smashed data of each image batch in turn, noise seeded apart from the attack's own draws."""
    with seeded(attack.seed, Stream.WIRE, attack.device):
        return [map_batches(smash, x, attack.cfg.batch_size, attack.device) for x in images]

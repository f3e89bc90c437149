"""Builds the client and server parts from a config: shared by centralized and federated runs."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from fl_cem.cem import ConditionalEntropy
from fl_cem.config import Config, TrainConfig
from fl_cem.data import BatchLoader, ImageSet
from fl_cem.defenses.base import Shapes
from fl_cem.registry import get_defense
from fl_cem.models.split import SplitModel, build_split_model
from fl_cem.training.layout import model_format, place
from fl_cem.training.step import ClientParts, ServerParts


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without it is a config error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"run.device = {name!r} but CUDA is not available; use 'cpu' or 'auto'")
    return torch.device(name)


def build_model(
    cfg: Config, input_shape: tuple[int, int, int], num_classes: int, mean: tuple[float, ...], std: tuple[float, ...]
) -> SplitModel:
    """The split model, initialised from ``run.seed`` so every party starts from the same weights."""
    with torch.random.fork_rng():
        torch.manual_seed(cfg.run.seed)
        return build_split_model(cfg.model, input_shape, num_classes, mean, std)


def sgd(params: list[nn.Parameter] | object, cfg: TrainConfig) -> torch.optim.SGD:
    """The paper's optimizer (section 5.1): SGD, lr 0.05, momentum, weight decay."""
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)  # type: ignore[arg-type]


AUTHORS_MILESTONES = (60 / 240, 120 / 240, 180 / 240, 210 / 240)
"""``train.schedule = "multistep"``: the CEM authors' MultiStep milestones, epochs 60, 120, 180 and
210 of 240 (``model_training_paral_pruning.py`` lines 516 and 528-533), as fractions of the run so
a shorter run keeps their shape."""
AUTHORS_GAMMA = 0.2


def lr_at(cfg: TrainConfig, epoch: int, total_epochs: int, batch: int = 0, batches: int = 1) -> float:
    """Learning rate of step ``batch`` of ``batches`` in ``epoch`` (0-based): a pure function, resume-safe.

    The decay (``train.schedule``) moves once per epoch; the linear warm-up over the first
    ``train.warmup-epochs`` moves every step, as in the authors' code (one epoch), because SGD
    at full rate on a fresh batch-norm net overshoots: the first epoch's loss ends above
    ln(classes) without it (docs/FEDERATED.md).
    """
    progress = epoch / total_epochs
    if cfg.schedule == "cosine":
        lr = cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))
    elif cfg.schedule == "step":
        lr = cfg.lr * (0.1 ** sum(progress >= m for m in (0.5, 0.75)))
    elif cfg.schedule == "multistep":
        lr = cfg.lr * (AUTHORS_GAMMA ** sum(progress >= m for m in AUTHORS_MILESTONES))
    else:
        lr = cfg.lr
    position = epoch + (batch + 1) / batches
    if position < cfg.warmup_epochs:
        lr *= position / cfg.warmup_epochs
    return lr


def batches_per_epoch(num_samples: int, batch_size: int) -> int:
    """Training batches of a partition of ``num_samples``: see :func:`drops_last`."""
    full, rest = divmod(num_samples, batch_size)
    return full + (0 if drops_last(num_samples, batch_size) or rest == 0 else 1)


def drops_last(num_samples: int, batch_size: int) -> bool:
    """Whether the trailing short batch is left out (a different one each epoch, as the order reshuffles).

    A batch under half the batch size is dropped whenever a full batch exists. Batch norm
    normalises such a batch with the statistics of a handful of images (two images on the
    1x1 maps of the deep VGG layers give every channel the values -1 and +1), and the
    decoder's running statistics, the ones evaluation uses, are pulled towards them. With ten
    clients of 130 digits, four such batches of two per epoch cost the federation most of its
    accuracy (docs/FEDERATED.md).
    """
    return num_samples >= batch_size and 0 < num_samples % batch_size < batch_size / 2


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def train_loader(data: ImageSet, cfg: Config, natural: bool, device: torch.device, seed: int, indices: Tensor | None = None) -> BatchLoader:
    """Shuffled, augmented training batches, the same for centralized training and every client.

    A trailing batch under half the batch size is dropped (:func:`drops_last`).
    """
    size = len(data) if indices is None else len(indices)
    return BatchLoader(
        data,
        cfg.train.batch_size,
        device,
        shuffle=True,
        augment=cfg.data.augment,
        flip=natural,
        seed=seed,
        drop_last=drops_last(size, cfg.train.batch_size),
        indices=indices,
    )


def build_client(cfg: Config, model: SplitModel, num_classes: int, dataset_size: int, device: torch.device) -> ClientParts:
    """Encoder (possibly reshaped by the defense), defense, optimizer and CEM statistics."""
    defense = get_defense(cfg.defense.name)(cfg, Shapes(model.input_shape, model.smashed_shape))
    memory_format = model_format(device, model.input_shape)
    encoder = place(defense.wrap_encoder(model.encoder), device, memory_format)
    defense.to(device)
    cem = ConditionalEntropy(cfg.cem, cfg.noise.sigma, num_classes, dataset_size)
    return ClientParts(encoder, defense, sgd(encoder.parameters(), cfg.train), cfg.noise.sigma, memory_format, cem)


def build_server(cfg: Config, model: SplitModel, device: torch.device) -> ServerParts:
    """The shared decoder and its optimizer."""
    memory_format = model_format(device, model.input_shape)
    decoder = place(model.decoder, device, memory_format)
    return ServerParts(decoder, sgd(decoder.parameters(), cfg.train), memory_format)

"""Builds the client and server parts from a config: shared by centralized and federated runs."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fl_cem.cem import ConditionalEntropy
from fl_cem.config import Config, TrainConfig
from fl_cem.data import BatchLoader, ImageSet
from fl_cem.defenses.base import Shapes
from fl_cem.registry import get_defense
from fl_cem.models.split import SplitModel, build_split_model
from fl_cem.training.client import Client
from fl_cem.training.layout import model_format, place
from fl_cem.training.schedule import Schedule
from fl_cem.training.server import Recorder, Server


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


def schedule_of(cfg: Config, kind: str, party: str) -> Schedule:
    """The learning-rate schedule of ``party`` (``client`` or ``server``) in a ``kind`` run.

    A federated client's rate is scaled by ``federated.encoder-lr-scale``: each encoder takes one
    step per own batch while the shared decoder takes one per batch of every client
    (docs/FEDERATED.md).
    """
    scale = cfg.federated.encoder_lr_scale if kind == "federated" and party == "client" else 1.0
    return Schedule(cfg.train, cfg.total_epochs(kind), scale)


def build_client(cfg: Config, model: SplitModel, num_classes: int, dataset_size: int, device: torch.device, kind: str = "centralized") -> Client:
    """Encoder (possibly reshaped by the defense), defense, optimizer, CEM statistics and schedule."""
    defense = get_defense(cfg.defense.name)(cfg, Shapes(model.input_shape, model.smashed_shape))
    memory_format = model_format(device, model.input_shape)
    encoder = place(defense.wrap_encoder(model.encoder), device, memory_format)
    defense.to(device)
    cem = ConditionalEntropy(cfg.cem, cfg.noise.sigma, num_classes, dataset_size)
    return Client(encoder, defense, sgd(encoder.parameters(), cfg.train), cfg.noise.sigma, memory_format, cem, schedule_of(cfg, kind, "client"), kind)


def build_server(cfg: Config, model: SplitModel, device: torch.device, kind: str = "centralized", recorder: Recorder | None = None) -> Server:
    """The shared decoder, its optimizer, schedule and (a curious server's) recorder."""
    memory_format = model_format(device, model.input_shape)
    decoder = place(model.decoder, device, memory_format)
    return Server(decoder, sgd(decoder.parameters(), cfg.train), memory_format, schedule_of(cfg, kind, "server"), recorder)

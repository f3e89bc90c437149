"""Builds the client and server parts from a config: shared by centralized and federated runs."""

from __future__ import annotations

import math
import sys

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
    """The one device decision: every party's tensors are placed on what this returns for ``run.device``.

    The centralized trainer, each federated client (``fl_cem/client_app.py`` per message), the
    server (``FederatedRun``), the in-process reference (``run_reference``) and the attacker
    (``attack_run``) call it, and pass the result down to the models, the data (uploaded once per
    process), the loaders and the attacks.

    ``auto`` is CUDA when this process may use a GPU, else the CPU. Inside a Ray worker (a
    simulated client's actor) that means a GPU Ray assigned to it (``client-resources-num-gpus``
    above 0): an actor given none runs on the CPU even where GPUs are visible to it, as they are
    when Ray runs with ``RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=0`` or, as Ray announces, by default
    in later versions (``ray/_private/utils.py::set_visible_accelerator_ids``); otherwise all such
    clients would share GPU 0 outside Ray's accounting. ``cpu``, ``cuda`` and ``cuda:N`` are
    obeyed as named.

    Deliberate CPU islands, correct whatever this returns: tensors cross the wire, and enter and
    leave checkpoints, as CPU arrays (``wire.py``, ``torch.load(map_location="cpu")``, then
    ``load_state_dict`` copies into the placed modules); the server averages encoders and merges
    CEM statistics on the CPU records it received (``strategies/split_strategy.py``); the CEM
    bound and the pixel entropy are float64 CPU math (``ConditionalEntropy.metrics``,
    ``cem/bound.py``: a few eigenvalues once per epoch, in the precision the bound needs); the
    curious server's recorder keeps what it intercepts in host memory; partitioning, plots and
    TensorBoard images read labels and pixels on the CPU.

    Raises
    ------
    ValueError
        ``cuda`` or ``cuda:N`` where CUDA is absent, or ``N`` beyond the devices visible here.
    """
    if name == "auto":
        gpus = ray_gpu_ids()
        usable = torch.cuda.is_available() and (gpus is None or len(gpus) > 0)
        return torch.device("cuda" if usable else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"run.device = {name!r} but CUDA is not available here; use 'cpu' or 'auto'")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"run.device = {name!r} but only {count} CUDA device(s) are visible here (cuda:0 to cuda:{count - 1})")
    return device


def ray_gpu_ids() -> list[str] | None:
    """GPU ids Ray assigned to this process when it is a Ray worker; ``None`` outside Ray's workers.

    The driver (the simulation process, where the server runs) is outside Ray's accounting and
    gets ``None``. Ray is only consulted when already imported: a process that never imported it
    is no Ray worker, and importing it would cost seconds.
    """
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    context = ray.get_runtime_context()
    if context.worker.mode != ray.WORKER_MODE:
        return None
    return [str(i) for i in context.get_accelerator_ids().get("GPU", [])]


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


def train_loader(
    data: ImageSet, cfg: Config, natural: bool, device: torch.device, seed: int, indices: Tensor | None = None, batch_size: int | None = None
) -> BatchLoader:
    """Shuffled, augmented training batches, the same for centralized training and every client.

    ``batch_size`` defaults to ``train.batch-size`` (a client's may differ:
    :func:`client_batch_size`). A trailing batch under half the batch size is dropped
    (:func:`drops_last`).
    """
    size = len(data) if indices is None else len(indices)
    batch_size = batch_size or cfg.train.batch_size
    return BatchLoader(
        data,
        batch_size,
        device,
        shuffle=True,
        augment=cfg.data.augment,
        flip=natural,
        seed=seed,
        drop_last=drops_last(size, batch_size),
        indices=indices,
    )


def client_batch_size(cfg: Config, sizes: list[int], partition_id: int) -> int:
    """Training batch of client ``partition_id`` among partitions of ``sizes`` (``federated.client-batch``).

    ``proportional``: every client splits its partition into the same number of batches, the
    federation's size over N x ``train.batch-size`` (at least one), so the clients' batches
    average ``train.batch-size`` and each wave holds every client.
    """
    if cfg.federated.client_batch == "fixed":
        return cfg.train.batch_size
    batches = max(1, round(sum(sizes) / (len(sizes) * cfg.train.batch_size)))
    return max(1, math.ceil(sizes[partition_id] / batches))


def schedule_of(cfg: Config, kind: str, party: str, clients: int = 1) -> Schedule:
    """The learning-rate schedule of ``party`` (``client`` or ``server``) in a ``kind`` run of ``clients`` clients.

    A federated client's rate is scaled by ``federated.encoder-lr-scale``: each encoder takes one
    step per own batch while the shared decoder takes one per batch of every client; a vanilla
    client's also by 1/N (``federated.vanilla-lr-divide``; docs/FEDERATED.md).
    """
    if kind != "federated" or party != "client":
        return Schedule(cfg.train, cfg.total_epochs(kind), 1.0)
    fed = cfg.federated
    divide = clients if fed.variant == "vanilla" and fed.vanilla_lr_divide else 1
    return Schedule(cfg.train, cfg.total_epochs(kind), fed.encoder_lr_scale / divide)


def build_client(
    cfg: Config, model: SplitModel, num_classes: int, dataset_size: int, device: torch.device, kind: str = "centralized", clients: int = 1
) -> Client:
    """Encoder (possibly reshaped by the defense), defense, optimizer, CEM statistics and schedule;
    ``clients`` is the federation's size N, which sets a vanilla encoder's rate."""
    defense = get_defense(cfg.defense.name)(cfg, Shapes(model.input_shape, model.smashed_shape))
    memory_format = model_format(device, model.input_shape)
    encoder = place(defense.wrap_encoder(model.encoder), device, memory_format)
    defense.to(device)
    cem = ConditionalEntropy(cfg.cem, cfg.noise.sigma, num_classes, dataset_size)
    return Client(encoder, defense, sgd(encoder.parameters(), cfg.train), cfg.noise.sigma, memory_format, cem, schedule_of(cfg, kind, "client", clients), kind)


def build_server(cfg: Config, model: SplitModel, device: torch.device, kind: str = "centralized", recorder: Recorder | None = None) -> Server:
    """The shared decoder, its optimizer, schedule and (a curious server's) recorder."""
    memory_format = model_format(device, model.input_shape)
    decoder = place(model.decoder, device, memory_format)
    return Server(decoder, sgd(decoder.parameters(), cfg.train), memory_format, schedule_of(cfg, kind, "server"), recorder)

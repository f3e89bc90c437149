"""Config sections of the run itself: where it writes, its data and partition, model, training and noise."""

from __future__ import annotations

from dataclasses import dataclass

from fl_cem.config.checks import fraction, non_negative, one_of, positive


@dataclass(frozen=True)
class RunConfig:
    name: str = "auto"
    """Run name; outputs go to ``<output-dir>/<name>/``. ``auto``: ``centralized`` for
    ``fl-cem train``, ``federated`` for ``flwr run``, so the two never share a folder."""
    output_dir: str = "runs"
    """Root folder of all runs; relative paths resolve against the working directory."""
    seed: int = 0
    """Seed for data order, initialisation, noise and partitioning."""
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``."""
    resume: bool = True
    """Continue from the last checkpoint in the run folder when one exists."""

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"run.name must be a non-empty folder name; got {self.name!r}")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ValueError(f"run.device must be auto, cpu, cuda or cuda:N; got {self.device!r}")


DATA_SOURCES = ("digits", "cifar10", "cifar100", "imagefolder")


@dataclass(frozen=True)
class DataConfig:
    source: str = "digits"
    """``digits`` (embedded, offline), ``cifar10``, ``cifar100`` or ``imagefolder``."""
    root: str = ""
    """CIFAR: folder holding (or receiving) the download (empty: ``$FL_CEM_DATA`` or
    ``~/.cache/fl-cem/data``); imagefolder: the tree or a .tar.gz."""
    download: bool = True
    """Let torchvision download CIFAR when ``root`` does not hold it."""
    val_fraction: float = 0.1
    """Share of the training split held out for model selection."""
    train_subset: int = 0
    """Use only this many training images (0 = all); stratified, seeded."""
    test_subset: int = 0
    """Use only this many test images (0 = all); stratified, seeded."""
    augment: bool = True
    """Random crop and (for natural images) horizontal flip on the training batches."""
    image_size: int = 0
    """Resize images to this square size (shorter side, then centre crop); 0 keeps the native size."""

    def __post_init__(self) -> None:
        one_of("data.source", self.source, DATA_SOURCES)
        if self.source == "imagefolder" and not self.root:
            raise ValueError("data.root must name an image folder or .tar.gz when data.source = 'imagefolder'")
        fraction("data.val-fraction", self.val_fraction, closed_low=True)
        if self.val_fraction >= 1:
            raise ValueError(f"data.val-fraction must be < 1; got {self.val_fraction}")
        non_negative("data.train-subset", self.train_subset)
        non_negative("data.test-subset", self.test_subset)
        non_negative("data.image-size", self.image_size)


PARTITIONERS = ("iid", "dirichlet", "pathological")


@dataclass(frozen=True)
class PartitionConfig:
    partitioner: str = "iid"
    """How the training split is divided among clients: ``iid``, ``dirichlet`` or ``pathological``."""
    num_partitions: int = 10
    """Number of client partitions (the federated path takes it from the node config when set)."""
    dirichlet_alpha: float = 0.5
    """Concentration of the label Dirichlet; smaller is more skewed."""
    classes_per_partition: int = 2
    """Classes each client holds under the ``pathological`` partitioner."""

    def __post_init__(self) -> None:
        one_of("partition.partitioner", self.partitioner, PARTITIONERS)
        positive("partition.num-partitions", self.num_partitions)
        positive("partition.dirichlet-alpha", self.dirichlet_alpha)
        positive("partition.classes-per-partition", self.classes_per_partition)


ARCHS = ("vgg11", "resnet20")
ENCODER_NORMS = ("batch", "group")


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "vgg11"
    """``vgg11`` (batch-norm VGG11, CIFAR head) or ``resnet20``."""
    cut: int = 2
    """Conv layers kept on the client: 1-3 for VGG11 (paper c1-c3), 1-4 stages units for ResNet-20."""
    bottleneck: int = 8
    """Channels of the bottleneck conv at the encoder output (0 = no bottleneck)."""
    sigmoid: bool = False
    """Squash the encoder output with a sigmoid before it leaves the client."""
    decoder_width: float = 1.0
    """Scale of the server-side conv widths (VGG11 only; 1 = the paper's). A narrower decoder
    makes CPU-scale reproductions affordable; the client's encoder is unchanged."""

    encoder_norm: str = "batch"
    """The encoder's normalisation: ``batch`` (the paper's VGG11-BN / ResNet-20) or ``group``
    (GroupNorm in place of every encoder BatchNorm; under label skew each client's batch
    statistics differ from the ones evaluation uses, docs/FEDERATED.md). The decoder keeps
    batch norm."""

    def __post_init__(self) -> None:
        one_of("model.arch", self.arch, ARCHS)
        one_of("model.encoder-norm", self.encoder_norm, ENCODER_NORMS)
        limit = 3 if self.arch == "vgg11" else 4
        if not 1 <= self.cut <= limit:
            raise ValueError(f"model.cut must be between 1 and {limit} for {self.arch}; got {self.cut}")
        non_negative("model.bottleneck", self.bottleneck)
        positive("model.decoder-width", self.decoder_width)
        if self.decoder_width != 1.0 and self.arch != "vgg11":
            raise ValueError(f"model.decoder-width scales VGG11's server convs only; got {self.decoder_width} with {self.arch}")


SCHEDULES = ("cosine", "step", "multistep", "constant")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    """Training epochs (centralized); the federated path runs ``federated.rounds`` instead."""
    batch_size: int = 16
    """Images per training batch (paper: 128; 16 suits the small embedded digits)."""
    lr: float = 0.02
    """SGD learning rate (paper: 0.05 on CIFAR; 0.02 is stable on the embedded digits)."""
    momentum: float = 0.9
    """SGD momentum."""
    weight_decay: float = 5e-4
    """SGD weight decay."""
    schedule: str = "cosine"
    """Learning-rate decay: ``cosine`` to zero, ``step`` (x0.1 at 50% and 75%), ``multistep`` (the
    authors': x0.2 at 25, 50, 75 and 87.5 %, their epochs 60/120/180/210 of 240) or ``constant``."""
    warmup_epochs: float = 1.0
    """Linear learning-rate warm-up over this many epochs, per step (the authors' one epoch); 0 disables."""
    eval_batch_size: int = 512
    """Images per evaluation batch."""

    def __post_init__(self) -> None:
        positive("train.epochs", self.epochs)
        positive("train.batch-size", self.batch_size)
        positive("train.lr", self.lr)
        fraction("train.momentum", self.momentum, closed_low=True)
        non_negative("train.weight-decay", self.weight_decay)
        one_of("train.schedule", self.schedule, SCHEDULES)
        non_negative("train.warmup-epochs", self.warmup_epochs)
        positive("train.eval-batch-size", self.eval_batch_size)


@dataclass(frozen=True)
class NoiseConfig:
    sigma: float = 0.025
    """Std of the Gaussian noise added to the smashed data on the client (paper: 0.025)."""

    def __post_init__(self) -> None:
        non_negative("noise.sigma", self.sigma)

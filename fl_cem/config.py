"""Typed, validated run configuration: the one place where defaults live.

Every key a user can set is a field of one of the frozen section dataclasses below.
Flower passes run-config keys flattened (``"cem.lambda"``), the centralized CLI reads the
same keys from a TOML file and ``--set`` overrides, and both go through
:meth:`Config.from_flat`, so a typo or a bad value fails the same way, before any work starts.

``pyproject.toml``'s ``[tool.flwr.app.config]`` must declare every key (``flwr run`` rejects
undeclared keys); ``tests/test_config.py`` checks that it mirrors these defaults exactly.
"""

from __future__ import annotations

import difflib
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from fl_cem.registry import list_attacks, list_defenses

Scalar = bool | int | float | str


def _key(metadata_key: str) -> dict[str, str]:
    """Field metadata for a field whose config key is not its name (``lambda`` is reserved)."""
    return {"key": metadata_key}


def _one_of(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{key} must be one of {', '.join(allowed)}; got {value!r}")


def _positive(key: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{key} must be > 0; got {value}")


def _non_negative(key: str, value: float) -> None:
    if value < 0:
        raise ValueError(f"{key} must be >= 0; got {value}")


def _fraction(key: str, value: float, *, closed_low: bool = False) -> None:
    low_ok = value >= 0 if closed_low else value > 0
    if not (low_ok and value <= 1):
        interval = "[0, 1]" if closed_low else "(0, 1]"
        raise ValueError(f"{key} must be in {interval}; got {value}")


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
    """CIFAR: folder holding (or receiving) the download; imagefolder: the tree or a .tar.gz."""
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
        _one_of("data.source", self.source, DATA_SOURCES)
        if self.source == "imagefolder" and not self.root:
            raise ValueError("data.root must name an image folder or .tar.gz when data.source = 'imagefolder'")
        _fraction("data.val-fraction", self.val_fraction, closed_low=True)
        if self.val_fraction >= 1:
            raise ValueError(f"data.val-fraction must be < 1; got {self.val_fraction}")
        _non_negative("data.train-subset", self.train_subset)
        _non_negative("data.test-subset", self.test_subset)
        _non_negative("data.image-size", self.image_size)


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
        _one_of("partition.partitioner", self.partitioner, PARTITIONERS)
        _positive("partition.num-partitions", self.num_partitions)
        _positive("partition.dirichlet-alpha", self.dirichlet_alpha)
        _positive("partition.classes-per-partition", self.classes_per_partition)


ARCHS = ("vgg11", "resnet20")


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

    def __post_init__(self) -> None:
        _one_of("model.arch", self.arch, ARCHS)
        limit = 3 if self.arch == "vgg11" else 4
        if not 1 <= self.cut <= limit:
            raise ValueError(f"model.cut must be between 1 and {limit} for {self.arch}; got {self.cut}")
        _non_negative("model.bottleneck", self.bottleneck)
        _positive("model.decoder-width", self.decoder_width)
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
        _positive("train.epochs", self.epochs)
        _positive("train.batch-size", self.batch_size)
        _positive("train.lr", self.lr)
        _fraction("train.momentum", self.momentum, closed_low=True)
        _non_negative("train.weight-decay", self.weight_decay)
        _one_of("train.schedule", self.schedule, SCHEDULES)
        _non_negative("train.warmup-epochs", self.warmup_epochs)
        _positive("train.eval-batch-size", self.eval_batch_size)


@dataclass(frozen=True)
class NoiseConfig:
    sigma: float = 0.025
    """Std of the Gaussian noise added to the smashed data on the client (paper: 0.025)."""

    def __post_init__(self) -> None:
        _non_negative("noise.sigma", self.sigma)


COVARIANCES = ("full", "diag", "isotropic")
CEM_VARIANTS = ("paper", "official")
CEM_FEDERATION = ("local", "global")


@dataclass(frozen=True)
class CEMConfig:
    lam: float = field(default=0.0, metadata=_key("lambda"))
    """Weight of the conditional-entropy loss L_C (paper: 16); 0 turns CEM off at no cost."""
    clusters_per_class: int = 3
    """Gaussian-mixture components per class (paper: k = 3n in total)."""
    covariance: str = "diag"
    """Covariance model of each component: ``full``, ``diag`` or ``isotropic``."""
    variant: str = "paper"
    """``paper`` (Eq. 5-7 as written) or ``official`` (the authors' public code)."""
    refit_every: int = 1
    """Refit the mixture (k-means++) every this many epochs."""
    federation: str = "global"
    """Federated runs: clients use their ``local`` statistics or the server's ``global`` merge."""
    kmeans_iters: int = 10
    """Lloyd iterations per refit."""

    def __post_init__(self) -> None:
        _non_negative("cem.lambda", self.lam)
        _positive("cem.clusters-per-class", self.clusters_per_class)
        _one_of("cem.covariance", self.covariance, COVARIANCES)
        _one_of("cem.variant", self.variant, CEM_VARIANTS)
        _positive("cem.refit-every", self.refit_every)
        _one_of("cem.federation", self.federation, CEM_FEDERATION)
        _positive("cem.kmeans-iters", self.kmeans_iters)

    @property
    def enabled(self) -> bool:
        return self.lam > 0

    @property
    def fits_before_training(self) -> bool:
        """Whether the first mixture is fitted on the untrained encoder, so L_C acts from step one.

        The paper fits at the start of every epoch (Alg. 1); the authors' code fits at the end
        of each, so its first epoch trains without L_C and the mixture never describes random
        features (docs/CEM.md).
        """
        return self.variant == "paper"

    @property
    def before_defense(self) -> bool:
        """Whether the mixture and ``L_C`` see the encoder's output before the defense's dropout or
        top-k (official: the authors compute the loss on the clean encoder output, ahead of noise,
        dropout and pruning, ``model_training_paral_pruning.py`` lines 1037-1099) or the
        transformed features ``z_hat`` (paper: Eq. 3's deterministic map x -> z_hat)."""
        return self.variant == "official"

    def refits_at(self, epoch: int) -> bool:
        """Whether the mixture is refitted before training epoch ``epoch`` (0-based).

        The one schedule of every path (centralized, a federated client's local fit, the
        server's global fit, also mid-round): Algorithm 1 refits at each epoch start, thinned to
        every ``refit-every`` epochs; the first epoch only when :attr:`fits_before_training`.
        """
        return self.enabled and epoch % self.refit_every == 0 and (epoch > 0 or self.fits_before_training)


ARL_LOSSES = ("pixel", "perceptual")


@dataclass(frozen=True)
class DefenseConfig:
    name: str = "none"
    """Registered defense applied to the smashed data (``fl-cem defenses`` lists them)."""
    dropout: float = 0.5
    """``dropout``: probability of zeroing a smashed-data element."""
    topk: float = 0.5
    """``topk``: fraction of activations kept per sample."""
    distcorr_weight: float = 0.5
    """``distcorr``/``noise_nopeek``: weight of the distance-correlation loss."""
    laplace_scale: float = 0.025
    """``noise_nopeek``: scale b of the Laplacian noise Titcombe et al. add to the features (std b * sqrt 2)."""
    adversary_weight: float = 0.5
    """Adversarial defenses: weight of the encoder's privacy (negative reconstruction) loss."""
    adversary_lr: float = 0.001
    """Adversarial defenses: Adam learning rate of the simulated inversion model."""
    adversary_warmup: int = 0
    """Adversarial defenses: simulated-adversary steps before the encoder's privacy term turns on."""
    arl_loss: str = "pixel"
    """``arl``: distance the encoder maximises, ``pixel`` (MSE) or ``perceptual`` (Xiao et al. 2020)."""
    ssim_threshold: float = 0.5
    """``ressfl``/``patrol``: SSIM below which the encoder's privacy term stops pushing (ResSFL: 0.5)."""
    prune_step: int = 0
    """``patrol``: client steps after which the encoder is pruned back to its size (0 = before training)."""

    def __post_init__(self) -> None:
        _fraction("defense.dropout", self.dropout, closed_low=True)
        if self.dropout >= 1:
            raise ValueError(f"defense.dropout must be < 1; got {self.dropout}")
        _fraction("defense.topk", self.topk)
        _non_negative("defense.distcorr-weight", self.distcorr_weight)
        _positive("defense.laplace-scale", self.laplace_scale)
        _non_negative("defense.adversary-weight", self.adversary_weight)
        _positive("defense.adversary-lr", self.adversary_lr)
        _non_negative("defense.adversary-warmup", self.adversary_warmup)
        _one_of("defense.arl-loss", self.arl_loss, ARL_LOSSES)
        _fraction("defense.ssim-threshold", self.ssim_threshold, closed_low=True)
        if self.ssim_threshold >= 1:
            raise ValueError(f"defense.ssim-threshold must be < 1; got {self.ssim_threshold}")
        _non_negative("defense.prune-step", self.prune_step)


ATTACK_MODES = ("train", "infer")
ATTACK_SCHEDULES = ("constant", "cosine")
ATTACK_NETWORKS = ("s9", "hires")
"""Names of ``fl_cem.attacks.networks.INVERSION_NETWORKS``, listed here so config validation imports no attack code."""


@dataclass(frozen=True)
class AttackConfig:
    name: str = "decoder"
    """Inversion attack: ``decoder``, ``gan`` or ``rmle``."""
    mode: str = "train"
    """Attacker's auxiliary data: ``train`` split or one half of ``infer`` (test) split."""
    epochs: int = 50
    """Training epochs of the inversion model (paper: 50 decoder, 150 GAN)."""
    lr: float = 0.001
    """``decoder``: Adam learning rate (the authors' code: 1e-3; paper S.9: 0.005, which leaked
    less at the same budget in ``benchmarks/attack_strength.py``)."""
    network: str = "s9"
    """``decoder``, ``gan``: inversion architecture, ``s9`` (paper S.9: residual blocks on the smashed map,
    then upsampling) or ``hires`` (upsampling first, residual blocks at image resolution)."""
    schedule: str = "cosine"
    """``decoder``: ``cosine`` from ``attack.lr`` to 1e-5 (the authors' code), or ``constant`` (paper S.9)."""
    weight_decay: float = 0.0001
    """``decoder``: Adam weight decay (the authors' code: 1e-4)."""
    validation: float = 0.1
    """``decoder``, ``gan``: share of the attacker's own images held out to pick its best epoch (0: the last epoch)."""
    batch_size: int = 64
    """Images per attack batch. 64 rather than the victim's 128: twice the steps for the same
    epochs, which cut the decoder attack's MSE on the CPU-scale No_defense victim from 0.0043 to
    0.0034 at the same cost (an independent attacker, ``benchmarks/independent_attack.py``, found it)."""
    intercept: bool = True
    """Federated runs: record a bounded sample of the smashed data arriving at the server."""
    intercept_max: int = 2048
    """Most smashed-data samples the curious server keeps per run."""
    holdout: float = 0.1
    """``train`` mode: share of the training split held out as targets, never in the attacker's data."""
    aux_limit: int = 0
    """Most auxiliary images the attacker trains on, a seeded sample (0 = all its split offers);
    bounds an attack's CPU cost when the training split is large."""
    gan_lr: float = 0.005
    """``gan``: Adam learning rate of generator and critic, constant (paper S.9: 0.005)."""
    gan_epochs: int = 150
    """``gan``: training epochs (paper S.9: 150); ``attack.epochs`` is the decoder's."""
    gan_mse_weight: float = 1500.0
    """``gan``: weight of the pixel MSE in the generator loss (the authors' code: 1500)."""
    gan_n_critic: int = 5
    """``gan``: critic updates per generator update (WGAN-GP as in Zhang et al. 2020: 5)."""
    rmle_steps: int = 500
    """``rmle``: Adam steps of the per-batch image optimisation."""
    rmle_lr: float = 0.05
    """``rmle``: Adam learning rate on the image logits."""
    rmle_tv: float = 0.0001
    """``rmle``: weight of the total-variation prior relative to the feature MSE."""

    def __post_init__(self) -> None:
        _one_of("attack.mode", self.mode, ATTACK_MODES)
        _positive("attack.epochs", self.epochs)
        _positive("attack.lr", self.lr)
        _one_of("attack.schedule", self.schedule, ATTACK_SCHEDULES)
        _one_of("attack.network", self.network, ATTACK_NETWORKS)
        _non_negative("attack.weight-decay", self.weight_decay)
        _fraction("attack.validation", self.validation, closed_low=True)
        if self.validation >= 1:
            raise ValueError(f"attack.validation must be < 1; got {self.validation}")
        _positive("attack.batch-size", self.batch_size)
        _non_negative("attack.intercept-max", self.intercept_max)
        _fraction("attack.holdout", self.holdout)
        _non_negative("attack.aux-limit", self.aux_limit)
        if self.holdout >= 1:
            raise ValueError(f"attack.holdout must be < 1; got {self.holdout}")
        _positive("attack.gan-lr", self.gan_lr)
        _positive("attack.gan-epochs", self.gan_epochs)
        _non_negative("attack.gan-mse-weight", self.gan_mse_weight)
        _positive("attack.gan-n-critic", self.gan_n_critic)
        _positive("attack.rmle-steps", self.rmle_steps)
        _positive("attack.rmle-lr", self.rmle_lr)
        _non_negative("attack.rmle-tv", self.rmle_tv)


VARIANTS = ("splitfed-v2", "splitfed-v1", "vanilla")
SERVE_ORDERS = ("lockstep", "arrival")


@dataclass(frozen=True)
class FederatedConfig:
    rounds: int = 8
    """Federated rounds."""
    local_epochs: int = 2
    """Passes over its partition a sampled client makes per round."""
    fraction_train: float = 1.0
    """Share of clients sampled each round."""
    min_clients: int = 1
    """Fail the run when fewer clients than this are left in a round."""
    variant: str = "splitfed-v2"
    """``splitfed-v2``: one shared decoder, encoders averaged (Thapa et al., AAAI 2022; the
    authors' ``V2_epoch``); ``splitfed-v1``: a decoder copy per client, averaged with the
    encoders (FedAvg of the whole model); ``vanilla``: each client keeps its own encoder and
    the shared decoder serves N feature spaces (docs/FEDERATED.md)."""
    sync_every: str = "epoch"
    """When SplitFed averages: ``round``, ``epoch`` (every local epoch, as the authors' code
    does) or a number of local batches such as ``8``; vanilla never averages."""
    encoder_lr_scale: float = 1.0
    """The clients' encoder learning rate is ``train.lr`` times this. Averaging N encoders after
    every batch makes one step on the mean gradient of N batches where centralized training
    takes N steps; the linear scaling rule (Goyal et al. 2017) sets this to N with
    ``sync-every = 1`` (docs/FEDERATED.md)."""
    chunk: int = 1
    """Batches per message; 1 is exact split learning, more trades exactness for speed."""
    client_timeout: float = 600.0
    """Seconds the server waits for a client reply before leaving it out of the round."""
    order: str = "lockstep"
    """``lockstep``: serve each step's replies in partition order (reproducible, resume-exact);
    ``arrival``: serve each reply the moment it arrives (order, and so results, vary by timing)."""

    @property
    def averages_encoders(self) -> bool:
        return self.variant != "vanilla"

    def sync_period(self, batches_per_epoch: int) -> int:
        """Local batches between two averages within a round; 0 = only at the round's end."""
        if not self.averages_encoders or self.sync_every == "round":
            return 0
        return batches_per_epoch if self.sync_every == "epoch" else int(self.sync_every)

    def __post_init__(self) -> None:
        _positive("federated.rounds", self.rounds)
        _positive("federated.local-epochs", self.local_epochs)
        _fraction("federated.fraction-train", self.fraction_train)
        _positive("federated.min-clients", self.min_clients)
        _one_of("federated.variant", self.variant, VARIANTS)
        if not (self.sync_every in ("round", "epoch") or (self.sync_every.isdigit() and int(self.sync_every) > 0)):
            raise ValueError(f"federated.sync-every must be 'round', 'epoch' or a positive number of batches; got {self.sync_every!r}")
        _positive("federated.encoder-lr-scale", self.encoder_lr_scale)
        _positive("federated.chunk", self.chunk)
        _positive("federated.client-timeout", self.client_timeout)
        _one_of("federated.order", self.order, SERVE_ORDERS)


EXECUTION_KEYS = ("run.resume", "run.device", "run.output-dir")


@dataclass(frozen=True)
class Config:
    """The whole run configuration; build it with :meth:`from_flat` or :meth:`load`."""

    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    cem: CEMConfig = field(default_factory=CEMConfig)
    defense: DefenseConfig = field(default_factory=DefenseConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    federated: FederatedConfig = field(default_factory=FederatedConfig)

    def __post_init__(self) -> None:
        if self.cem.enabled and self.cem.variant == "paper" and self.noise.sigma == 0:
            raise ValueError(
                "cem.lambda > 0 with cem.variant = 'paper' needs noise.sigma > 0: "
                "the bound's log-determinant ratio log|S+Sp|/|Sp| is infinite for Sp = 0"
            )
        if self.defense.name not in list_defenses():
            raise ValueError(
                f"defense.name {self.defense.name!r} is not a registered defense; "
                f"choose one of {', '.join(list_defenses())}"
            )
        if self.attack.name not in list_attacks():
            raise ValueError(
                f"attack.name {self.attack.name!r} is not a registered attack; "
                f"choose one of {', '.join(list_attacks())}"
            )

    # ------------------------------------------------------------------ flat keys
    @classmethod
    def defaults_flat(cls) -> dict[str, Scalar]:
        """Every key with its default, as ``pyproject.toml`` must declare them."""
        return cls.to_flat(cls())

    def to_flat(self) -> dict[str, Scalar]:
        """Flattened ``{"section.key": value}`` view, for results files and Flower."""
        flat: dict[str, Scalar] = {}
        for section in fields(self):
            sub = getattr(self, section.name)
            for f in fields(sub):
                flat[f"{section.name}.{f.metadata.get('key', f.name.replace('_', '-'))}"] = getattr(sub, f.name)
        return flat

    @classmethod
    def from_flat(cls, flat: Mapping[str, Any]) -> Config:
        """Build a validated config from flattened keys; unknown keys and wrong types raise."""
        known = cls.defaults_flat()
        by_section: dict[str, dict[str, Any]] = {}
        for key, value in flat.items():
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(f"unknown config key {key!r}{hint}")
            value = _coerce(key, value, known[key])
            section, name = key.split(".", 1)
            by_section.setdefault(section, {})[_field_name(cls, section, name)] = value
        sections = {}
        for section in fields(cls):
            sub_cls = section.default_factory  # type: ignore[misc]
            sections[section.name] = sub_cls(**by_section.get(section.name, {}))  # type: ignore[operator]
        return cls(**sections)

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> Config:
        """Read a run-config TOML (nested tables or dotted keys) and apply ``overrides`` on top."""
        flat: dict[str, Any] = {}
        if path is not None:
            path = Path(path)
            if not path.is_file():
                raise FileNotFoundError(f"config file {path} does not exist")
            try:
                flat.update(flatten(tomllib.loads(path.read_text())))
            except tomllib.TOMLDecodeError as err:
                raise ValueError(f"config file {path} is not valid TOML: {err}") from err
        flat.update(overrides or {})
        return cls.from_flat(flat)

    def differences(self, other: Mapping[str, Any]) -> list[str]:
        """Keys whose values differ from a flat config, ignoring where and how a run executes.

        ``run.resume``, ``run.device`` and ``run.output-dir`` do not change what a run computes,
        so a checkpoint stays valid across them (a sweep moved to a GPU, an absolute path).
        The attacker's settings (``attack.*`` but the curious server's interception during
        training) only act after training, and a key the checkpoint predates counts as its
        default, which keeps what the older code computed: a run trained before an upgrade
        resumes after it.
        """
        defaults = Config.defaults_flat()
        mine = {k: v for k, v in self.to_flat().items() if k not in EXECUTION_KEYS and not _attack_only(k)}
        return sorted(k for k in mine if mine[k] != other.get(k, defaults[k]))

    def cem_idle_reason(self, kind: str) -> str | None:
        """Why ``cem.lambda > 0`` would change nothing in a ``kind`` run, or ``None`` when L_C acts.

        The mixture L_C needs exists only after the first refit (:meth:`CEMConfig.refits_at`):
        the official variant fits it after epoch 1, so a one-epoch run trains without CEM and
        its "CEM" row equals the row without it to every digit.
        """
        cem = self.cem
        epochs = self.train.epochs if kind == "centralized" else self.federated.rounds * self.federated.local_epochs
        if not cem.enabled or any(cem.refits_at(epoch) for epoch in range(epochs)):
            return None
        return (
            f"cem.lambda = {cem.lam:g} never acts: the {cem.variant} variant fits its first mixture "
            f"{'before epoch 1' if cem.fits_before_training else 'after epoch 1'} (cem.refit-every = {cem.refit_every}) "
            f"and the run trains {epochs} epoch(s)"
        )

    def for_kind(self, kind: str) -> Config:
        """This config with ``run.name = auto`` resolved to the entry point's folder (``centralized``, ``federated``)."""
        return self if self.run.name != "auto" else self.replace(**{"run.name": kind})

    def replace(self, **flat: Any) -> Config:
        """A copy with some flat keys changed (``cfg.replace(**{"cem.lambda": 16.0})``)."""
        return Config.from_flat({**self.to_flat(), **flat})


TRAINING_ATTACK_KEYS = ("attack.intercept", "attack.intercept-max")
"""The ``attack.*`` keys that act during training: what the curious server records."""


def _attack_only(key: str) -> bool:
    return key.startswith("attack.") and key not in TRAINING_ATTACK_KEYS


def field_docs() -> dict[str, str]:
    """Each key's docstring (the string under its field) on one line, by flat key.

    Attribute docstrings are not kept at run time, so they are read from this module's source.
    """
    import ast
    import inspect
    import sys

    tree = ast.parse(inspect.getsource(sys.modules[__name__]))
    sections = {f.default_factory.__name__: f.name for f in fields(Config)}  # type: ignore[union-attr]
    docs: dict[str, str] = {}
    for node in tree.body:
        if not (isinstance(node, ast.ClassDef) and node.name in sections):
            continue
        sub_cls = getattr(sys.modules[__name__], node.name)
        keys = {f.name: f.metadata.get("key", f.name.replace("_", "-")) for f in fields(sub_cls)}
        for field_node, doc_node in zip(node.body, node.body[1:]):
            if (
                isinstance(field_node, ast.AnnAssign)
                and isinstance(field_node.target, ast.Name)
                and field_node.target.id in keys
                and isinstance(doc_node, ast.Expr)
                and isinstance(doc_node.value, ast.Constant)
                and isinstance(doc_node.value.value, str)
            ):
                docs[f"{sections[node.name]}.{keys[field_node.target.id]}"] = " ".join(doc_node.value.value.split()).replace("``", "")
    return docs


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested tables to dotted keys, as Flower does for run configs."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        full = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{full}."))
        else:
            out[full] = value
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """Parse one ``--set key=value``; the value is read as TOML, falling back to a bare string."""
    if "=" not in text:
        raise ValueError(f"--set expects key=value; got {text!r}")
    key, raw = (part.strip() for part in text.split("=", 1))
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def _field_name(cls: type[Config], section: str, key: str) -> str:
    sub_cls = next(f for f in fields(cls) if f.name == section).default_factory  # type: ignore[misc]
    for f in fields(sub_cls):  # type: ignore[arg-type]
        if f.metadata.get("key", f.name.replace("_", "-")) == key:
            return f.name
    raise KeyError(key)


def _coerce(key: str, value: Any, default: Scalar) -> Scalar:
    expected = type(default)
    if expected is bool:
        if isinstance(value, bool):
            return value
    elif expected is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif expected is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(value, str):
        return value
    elif isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # ``sync-every=8`` arrives as a number from ``--run-config``
    raise ValueError(f"config key {key!r} expects {expected.__name__}; got {value!r} ({type(value).__name__})")


__all__ = ["Config", "flatten", "parse_override"]

"""The ``attack.*`` section: the inversion attacks run on a finished run, and what the curious server records."""

from __future__ import annotations

from dataclasses import dataclass

from fl_cem.config.checks import fraction, non_negative, one_of, positive

ATTACK_MODES = ("train", "infer")
ATTACK_SCHEDULES = ("constant", "cosine")
ATTACK_NETWORKS = ("s9", "hires")
"""Names of ``fl_cem.attacks.networks.INVERSION_NETWORKS``, listed here so config validation imports no attack code."""


@dataclass(frozen=True)
class AttackConfig:
    name: str = "decoder"
    """Inversion attack: ``decoder``, ``gan`` or ``rmle`` (white-box: they smash with the client's
    encoder), ``fora`` or ``unsplit`` (black-box: they see only intercepted smashed data), or
    ``cem_stats`` (white-box, on the recorded CEM statistics channel: class prototypes)."""
    mode: str = "train"
    """Attacker's auxiliary data: ``train`` split or one half of ``infer`` (test) split."""
    epochs: int = 50
    """Training epochs of the inversion model (paper: 50 decoder, 150 GAN)."""
    lr: float = 0.001
    """``decoder``, ``fora``'s inversion stage: Adam learning rate (the authors' code: 1e-3; paper S.9: 0.005, which leaked
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
    intercept_stats: bool = True
    """Federated runs with ``cem.federation = global``: record what each client uploads on the
    CEM statistics channel (centres, counts, sums, moments) and the merged sums."""
    intercept_stats_max: int = 2
    """Most CEM refits the curious server keeps per client (the latest ones; 0 records none):
    each holds a client's two uploads, about 3K x d floats with diagonal covariances, K x d x d with full."""
    stats_samples: int = 32
    """``cem_stats``: features drawn per cluster from the uploaded Gaussian (mean, covariance) and
    decoded, whose decoded images are averaged into the class prototype (0: decode the means only;
    a channel under ``cem.stats-noise`` is always decoded from its means, its moments being mostly noise)."""
    seed: int = 0
    """Repeat of the attack: the attacker's own randomness (its networks' initialisation, batch
    order, noise draws) comes from ``run.seed + 1000 x attack.seed``, while its targets and
    auxiliary images stay those of ``run.seed``, so repeats 0, 1, 2 score the same images. Reports
    keep, per victim, the repeat the attacker's own validation images favour (restarts)."""
    holdout: float = 0.1
    """``train`` mode: share of the training split held out as targets, never in the attacker's data
    (federated runs: the most last-round wire rows scored, as a share of the training split)."""
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
    fora_epochs: int = 30
    """``fora``: epochs of substitute-encoder training over the auxiliary images, each batch
    matched against as many rows drawn from all the intercepted smashed data, before the
    inversion stage's ``attack.epochs`` (FORA's code: 10,000 iterations of 64 on a GPU, about 140
    epochs of its 5,000 auxiliary images; about 12 s an epoch of 4,500 CIFAR images on one CPU thread)."""
    fora_lr: float = 0.001
    """``fora``: Adam learning rate of the substitute encoder (FORA's code: 1e-4 over 40,000
    iterations; raised for the few epochs a CPU affords)."""
    fora_critic_lr: float = 0.0003
    """``fora``: Adam learning rate of the feature critic (FORA's code: 3e-4)."""
    fora_mmd_weight: float = 0.8
    """``fora``: share of MK-MMD in the substitute's loss, the critic's term taking the rest (FORA's
    paper: 0.8; its code's default 1.0 with five kernels, and 0.0, matched the substitute to a
    CIFAR-10 victim no better, see README)."""
    unsplit_targets: int = 64
    """``unsplit``: most targets reconstructed, the first ones (per-target optimisation: the cost
    grows with each); results record how many were scored."""
    unsplit_rounds: int = 20
    """``unsplit``: alternations of input steps and surrogate steps (UnSplit: 1,000 on a GPU)."""
    unsplit_input_steps: int = 50
    """``unsplit``: Adam steps on the images per round (UnSplit: 100)."""
    unsplit_model_steps: int = 50
    """``unsplit``: Adam steps on the surrogate encoder per round (UnSplit: 100)."""
    unsplit_lr: float = 0.001
    """``unsplit``: Adam learning rate of images and surrogate (UnSplit: 1e-3). At 1e-2 the
    images of one seed in four converged to an inverted solution on the test encoder."""
    unsplit_tv: float = 0.1
    """``unsplit``: weight of the total-variation prior relative to the feature MSE (UnSplit: 0.1)."""

    def __post_init__(self) -> None:
        one_of("attack.mode", self.mode, ATTACK_MODES)
        positive("attack.epochs", self.epochs)
        positive("attack.lr", self.lr)
        one_of("attack.schedule", self.schedule, ATTACK_SCHEDULES)
        one_of("attack.network", self.network, ATTACK_NETWORKS)
        non_negative("attack.weight-decay", self.weight_decay)
        fraction("attack.validation", self.validation, closed_low=True)
        if self.validation >= 1:
            raise ValueError(f"attack.validation must be < 1; got {self.validation}")
        positive("attack.batch-size", self.batch_size)
        non_negative("attack.intercept-max", self.intercept_max)
        non_negative("attack.intercept-stats-max", self.intercept_stats_max)
        non_negative("attack.stats-samples", self.stats_samples)
        non_negative("attack.seed", self.seed)
        fraction("attack.holdout", self.holdout)
        non_negative("attack.aux-limit", self.aux_limit)
        if self.holdout >= 1:
            raise ValueError(f"attack.holdout must be < 1; got {self.holdout}")
        positive("attack.gan-lr", self.gan_lr)
        positive("attack.gan-epochs", self.gan_epochs)
        non_negative("attack.gan-mse-weight", self.gan_mse_weight)
        positive("attack.gan-n-critic", self.gan_n_critic)
        positive("attack.rmle-steps", self.rmle_steps)
        positive("attack.rmle-lr", self.rmle_lr)
        non_negative("attack.rmle-tv", self.rmle_tv)
        positive("attack.fora-epochs", self.fora_epochs)
        positive("attack.fora-lr", self.fora_lr)
        positive("attack.fora-critic-lr", self.fora_critic_lr)
        fraction("attack.fora-mmd-weight", self.fora_mmd_weight, closed_low=True)
        positive("attack.unsplit-targets", self.unsplit_targets)
        positive("attack.unsplit-rounds", self.unsplit_rounds)
        positive("attack.unsplit-input-steps", self.unsplit_input_steps)
        positive("attack.unsplit-model-steps", self.unsplit_model_steps)
        positive("attack.unsplit-lr", self.unsplit_lr)
        non_negative("attack.unsplit-tv", self.unsplit_tv)

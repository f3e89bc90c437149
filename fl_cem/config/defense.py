"""The ``defense.*`` section: which obfuscation defense the client runs, and its strengths."""

from __future__ import annotations

from dataclasses import dataclass

from fl_cem.config.checks import fraction, non_negative, one_of, positive

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
        fraction("defense.dropout", self.dropout, closed_low=True)
        if self.dropout >= 1:
            raise ValueError(f"defense.dropout must be < 1; got {self.dropout}")
        fraction("defense.topk", self.topk)
        non_negative("defense.distcorr-weight", self.distcorr_weight)
        positive("defense.laplace-scale", self.laplace_scale)
        non_negative("defense.adversary-weight", self.adversary_weight)
        positive("defense.adversary-lr", self.adversary_lr)
        non_negative("defense.adversary-warmup", self.adversary_warmup)
        one_of("defense.arl-loss", self.arl_loss, ARL_LOSSES)
        fraction("defense.ssim-threshold", self.ssim_threshold, closed_low=True)
        if self.ssim_threshold >= 1:
            raise ValueError(f"defense.ssim-threshold must be < 1; got {self.ssim_threshold}")
        non_negative("defense.prune-step", self.prune_step)

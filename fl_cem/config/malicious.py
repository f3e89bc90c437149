"""The ``malicious.*`` section: a malicious federated server's attack, and the clients' check for it."""

from __future__ import annotations

from dataclasses import dataclass

from fl_cem.config.checks import non_negative, one_of, positive

MALICIOUS_ATTACKS = ("none", "fsha")


@dataclass(frozen=True)
class MaliciousConfig:
    attack: str = "none"
    """``none``: the server returns its decoder's gradient (honest, or curious with
    ``attack.intercept``); ``fsha``: feature-space hijacking (Pasquini et al., CCS 2021): it
    returns the gradient of a critic's score instead, which steers the clients' encoders into
    the feature space of its own pilot encoder, and inverts what they send with the pilot's
    decoder (``fl_cem/federated/hijack.py``). Federated runs only."""
    lr: float = 0.001
    """``fsha``: Adam learning rate of the pilot encoder and its decoder, an autoencoder on the
    server's public images (the authors' code: 1e-5 over 10,000s of steps; raised for the few
    hundred a CPU run serves)."""
    critic_lr: float = 0.001
    """``fsha``: Adam learning rate of the critic on the smashed space (the authors' code: 1e-4, too
    slow to follow clients stepping with SGD at ``train.lr``)."""
    gradient_penalty: float = 10.0
    """``fsha``: weight of the critic's WGAN-GP gradient penalty (Gulrajani et al. 2017: 10; the
    authors' code: 500, which on digits left the inversion at 0.72 of the mean image's MSE
    after five rounds where 10 reached 0.33; README)."""
    gradient_scale: float = 0.1
    """``fsha``: factor on the gradient sent to the clients. Their optimizer is theirs (SGD at
    ``train.lr``), so this is the server's only hold on how fast their encoders move; the
    critic must keep up with them (the authors' code moves the client's encoder with Adam at 1e-5)."""
    cancel_momentum: bool = False
    """``fsha``: cancel the clients' SGD momentum (``train.momentum``, which the server knows from
    the training protocol): send ``g_t - momentum * g'_t``, with ``g'_t`` the gradient of the
    critic the client was last sent from, taken at this batch, so each client's momentum buffer
    holds about the current critic's gradient instead of a sum over critics it has moved past.
    Off: the attack as published. On CIFAR-10 at Table 1's CPU scale it is what made the attack
    beat the mean image on No_defense (0.62-0.85 of its MSE in rounds 4-8, against 1.6-2.9 without);
    on digits it did worse than without (Bottleneck 0.82 against 0.22 after eight rounds), so it
    stays off by default (README, "A malicious server")."""
    augment: bool = False
    """``fsha``: train the pilot autoencoder and the critic on the server's public images augmented
    as the clients augment theirs (``data.augment``: random crop with zero padding, flip for
    natural images; the server knows the training protocol as it knows the architecture). The
    clients' smashed data come from augmented images, with black borders the public images lack;
    without it the critic also tells the two sets apart by those borders and the pilot's decoder
    never learns to draw them. Off: the attack as published."""
    follow_rate: bool = False
    """``fsha``: multiply the gradient sent by ``train.lr`` over the learning rate of the step
    (the schedule, which the server knows from the training protocol), so the client's step
    from the hijack keeps its size while its schedule decays (rates below 1/100 of
    ``train.lr`` count as that). Against CEM's official variant, whose encoder step
    ``lambda * 0.001 * grad L_C`` does not decay with the rate: at a constant factor the
    hijack's share of the client's step shrinks round by round (README, "A malicious
    server"). Off: the attack as published."""
    scored: int = 256
    """``fsha``: smashed rows of each round's last batches the server inverts and scores against
    the clients' images at the round's end (the measurement, not the attack)."""
    alarm: float = 0.2
    """Every federated client's check: it flags a round in which the per-sample norms of the
    gradients it received spread less than this (their coefficient of variation per batch,
    averaged over the round; ``fl_cem/federated/detection.py``). Measured (README): honest
    servers 0.34 and more (digits, one and two clients, eight rounds; CIFAR-10 0.50 and more);
    ``fsha`` 0.078 and less, and up to 0.157 with ``malicious.cancel-momentum``, which a
    threshold of 0.1 missed in most rounds."""

    def __post_init__(self) -> None:
        one_of("malicious.attack", self.attack, MALICIOUS_ATTACKS)
        positive("malicious.lr", self.lr)
        positive("malicious.critic-lr", self.critic_lr)
        positive("malicious.gradient-penalty", self.gradient_penalty)
        positive("malicious.gradient-scale", self.gradient_scale)
        positive("malicious.scored", self.scored)
        non_negative("malicious.alarm", self.alarm)

"""The ``federated.*`` section: the split-learning variant, rounds, synchronisation and serving."""

from __future__ import annotations

from dataclasses import dataclass

from fl_cem.config.checks import fraction, one_of, positive

VARIANTS = ("splitfed-v2", "splitfed-v1", "vanilla")
SERVE_ORDERS = ("lockstep", "arrival")
SAMPLINGS = ("random", "epoch")
CLIENT_BATCHES = ("fixed", "proportional")


@dataclass(frozen=True)
class FederatedConfig:
    rounds: int = 8
    """Federated rounds."""
    local_epochs: int = 2
    """Passes over its partition a sampled client makes per round."""
    fraction_train: float = 1.0
    """Share of clients sampled each round."""
    sampling: str = "random"
    """How ``fraction-train`` picks a round's clients: ``random``, a fresh uniform draw every
    round as Flower's ``FedAvg`` does (``sample_nodes``: ``random.sample``), so some clients
    train twice in ``1 / fraction`` rounds and others not at all; or ``epoch``, a shuffled
    permutation of all clients walked ``fraction * N`` at a time, so every client trains exactly
    once per ``ceil(1 / fraction)`` rounds (one pass over the federation's data), then a new
    permutation."""
    fraction_evaluate: float = 1.0
    """Share of clients evaluated after each round (at least one), drawn like Flower's
    ``FedAvg.fraction_evaluate``; every client smashes the test split, so with N = 1,000
    evaluating all of them costs far more than the round's training."""
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
    vanilla_lr_divide: bool = True
    """Vanilla only: each client's encoder learning rate is also divided by the number of
    clients N. Vanilla's N encoders drift apart from one initialisation while one decoder serves
    all of them; at 1/N each encoder moves per wave about as far as SplitFed's average moves the
    federation's (digits, 10 IID clients: 0.646 at the full rate, 0.892 at 1/10;
    docs/FEDERATED.md). ``false`` keeps ``train.lr`` (times ``encoder-lr-scale``), the rate the
    other variants use."""
    server_mix: bool = False
    """SplitFed V2 with ``order = lockstep``: the server pools each wave's batches (one chunk of
    every client), shuffles the samples and steps the decoder on as many mixed batches as it
    was sent, instead of on one client's batch after another; under label skew each batch then
    holds every client's classes (docs/FEDERATED.md). A client's gradient comes back only once
    the whole wave is in."""
    server_batch: int = 0
    """Fewer, larger decoder steps (SplitFed V2 in lockstep; 0: one step per client batch, so at
    N = 1,000 with 50 images a client, 1,000 steps of 50 an epoch). With ``server-mix``: the
    pooled wave is re-cut into steps of at most this many images, as SplitFed V1's server does
    in effect (its per-client decoder copies, stepped from the same weights and averaged, make
    one step on the mean gradient of their batches). Without: the server joins consecutive
    client batches of a wave, in partition order, until they hold at least this many images and
    steps on them together, so clients whose batches are served compute on while the rest of
    the wave comes in (a batch this large or larger is its own step, and exact). Either way each
    client gets the gradient of the mean loss over its own batch, whatever the size of the step
    its samples were in."""
    client_batch: str = "fixed"
    """A client's training batch: ``fixed``, ``train.batch-size`` for every client (the authors'
    protocol); or ``proportional``, its partition size over a number of batches per epoch that
    every client shares (the federation's size over N x ``train.batch-size``), so under a
    Dirichlet split of unequal sizes every lockstep wave still holds a batch of every client, and
    with ``server-mix`` the wave pooled is a sample of the whole federation's data in its
    proportions, as a centralized shuffled batch is (docs/FEDERATED.md)."""
    chunk: int = 1
    """Batches per message; 1 is exact split learning, more trades exactness for speed."""
    max_in_flight: int = 16
    """Messages the server leaves with Flower at a time (0: no limit); the rest wait in the
    server, in order. Flower's simulation engine scans every stored message for every node
    10 times a second, which at N = 1,000 with 100 messages pushed at once took a core of the
    server's process (README, "1,000 clients"). Two per client actor keeps the actors busy;
    with ``order = lockstep`` results do not depend on it."""
    client_timeout: float = 600.0
    """Seconds the server waits for a client reply before leaving it out of the round."""
    order: str = "lockstep"
    """``lockstep``: serve each step's replies in partition order (reproducible, resume-exact);
    ``arrival``: serve each reply the moment it arrives (order, and so results, vary by timing)."""

    @property
    def pools(self) -> bool:
        """Whether the server steps its decoder on more than one client batch at a time."""
        return self.server_mix or self.server_batch > 0

    @property
    def pooling_key(self) -> str:
        """The key that makes the server pool, for error messages."""
        return "federated.server-mix" if self.server_mix else "federated.server-batch"

    @property
    def averages_encoders(self) -> bool:
        return self.variant != "vanilla"

    def sync_period(self, batches_per_epoch: int) -> int:
        """Local batches between two averages within a round; 0 = only at the round's end."""
        if not self.averages_encoders or self.sync_every == "round":
            return 0
        return batches_per_epoch if self.sync_every == "epoch" else int(self.sync_every)

    def __post_init__(self) -> None:
        positive("federated.rounds", self.rounds)
        positive("federated.local-epochs", self.local_epochs)
        fraction("federated.fraction-train", self.fraction_train)
        one_of("federated.sampling", self.sampling, SAMPLINGS)
        fraction("federated.fraction-evaluate", self.fraction_evaluate)
        positive("federated.min-clients", self.min_clients)
        one_of("federated.variant", self.variant, VARIANTS)
        if not (self.sync_every in ("round", "epoch") or (self.sync_every.isdigit() and int(self.sync_every) > 0)):
            raise ValueError(f"federated.sync-every must be 'round', 'epoch' or a positive number of batches; got {self.sync_every!r}")
        positive("federated.encoder-lr-scale", self.encoder_lr_scale)
        one_of("federated.client-batch", self.client_batch, CLIENT_BATCHES)
        positive("federated.chunk", self.chunk)
        if self.server_batch < 0:
            raise ValueError(f"federated.server-batch must be >= 0 (0: one decoder step per client batch); got {self.server_batch}")
        if self.pools and (self.variant != "splitfed-v2" or self.order != "lockstep"):
            raise ValueError(
                f"{self.pooling_key} pools a lockstep wave into one shared decoder: it needs variant 'splitfed-v2' and order 'lockstep'; got {self.variant!r}, {self.order!r}"
            )
        if self.max_in_flight < 0:
            raise ValueError(f"federated.max-in-flight must be >= 0 (0: no limit); got {self.max_in_flight}")
        positive("federated.client-timeout", self.client_timeout)
        one_of("federated.order", self.order, SERVE_ORDERS)

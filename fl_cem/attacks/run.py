"""Attack a finished run: ``fl-cem attack --run runs/<name> --attack decoder --mode train``.

The victim is the client encoder of the run: the centralized model, or a federated client's
final encoder. A white-box attack (Sec. 3.1) gets its smashing function; a black-box one
(``fora``, ``unsplit``) gets only the public design (:mod:`fl_cem.attacks.design`), the
auxiliary images and the smashed data a curious server intercepts, which the victim's own
code puts on the wire here: the targets', and for ``fora`` also every other image the client
sent that the attacker does not hold (never an auxiliary image's: image/feature pairs would
make it white-box). Targets are

- ``train`` mode of a federated run with a recording: the smashed data the curious server
  actually received in the last round (``intercept/intercept.pt``), at most ``attack.holdout``
  of the training split's size of them, scored against the images the client sent, which are
  found by replaying the client's deterministic data order; the attacker learns from the rest
  of the training split; the recording's other rows, less rows of images the attacker holds,
  are the further intercepted rows;
- otherwise: held-out images (see :func:`fl_cem.attacks.evaluate.attack_splits`), smashed
  with the victim's encoder and noise. In ``train`` mode the training images left out of the
  auxiliary set by ``attack.aux-limit`` are the further intercepted rows; in ``infer`` mode the
  deployed queries are the targets alone.

The recording spans the last round, during which the encoder kept training, while the attacker
holds only the final weights: that mismatch works in the victim's favour and is reported as
``target_source = "wire"`` so it is not mistaken for the ``smashed`` setting.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from fl_cem.attacks.base import Threat
from fl_cem.attacks.design import public_design
from fl_cem.attacks.evaluate import MEAN_IMAGE_MARGIN, attacker_seed, beats_mean_image, limit_aux, make_attack, repeat_tag, run_attack, split_aux, split_images
from fl_cem.attacks.metrics import bound_fields, save_comparison
from fl_cem.cem.bound import gaussian_entropy, swap_entropy
from fl_cem.config import Config
from fl_cem.data import BatchLoader, DataSplits, load_splits
from fl_cem.federated.client_logic import SplitClient
from fl_cem.federated.wire import from_bytes
from fl_cem.registry import get_attack
from fl_cem.reporting.board import Board
from fl_cem.reporting.progress import EpochProgress
from fl_cem.reporting.run_dir import RunDir, failure_reason, refuse_other_kind
from fl_cem.training.client import Client
from fl_cem.training.setup import build_client, build_model, resolve_device
from fl_cem.training.step import batch_seed

ATTACKER = -1
"""Client index of the attacker's noise stream: disjoint from every real client's batch seeds."""


@dataclass
class Victim:
    """A client as the white-box attacker sees it: the :class:`Client` object that trained, loaded
    from the run's checkpoint, and for a federated run the :class:`SplitClient` around it (its data order)."""

    name: str
    client: Client
    federated: SplitClient | None

    def smash(self, seed: int) -> Callable[[Tensor], Tensor]:
        """The client's own forward pass (:meth:`Client.forward`), deployed
        (:meth:`Client.deployed`: eval mode, frozen weights), a fresh noise draw per call from
        seeds the attacker picks (it knows the law).

        Gradients flow to the input (rMLE optimises images through it), not to the weights.
        """
        calls = itertools.count()

        def smash_batch(x: Tensor) -> Tensor:
            with self.client.deployed(frozen=True):
                return self.client.forward(x, batch_seed(seed, 0, next(calls), ATTACKER)).z

        return smash_batch

    def channel(self, before_defense: bool) -> Callable[[Tensor], Tensor]:
        """The client's noise-free features as its CEM statistics summarise them
        (:meth:`Client.features`, deployed; ``z_raw`` with ``before_defense``), for the
        ``cem_stats`` attack's auxiliary images."""

        def features(x: Tensor) -> Tensor:
            return self.client.features([(x, torch.zeros(len(x), dtype=torch.long))], before_defense)[0]

        return features


def load_victims(run: RunDir, cfg: Config, client: int | None, device: torch.device) -> list[Victim]:
    """The encoders to attack: the centralized one, or federated clients (one, or each in turn)."""
    if not run.checkpoint_path.is_file():
        raise FileNotFoundError(f"{run.root} has no {run.checkpoint_path.name}: train the run before attacking it")
    state = torch.load(run.checkpoint_path, map_location="cpu", weights_only=True)
    refuse_other_kind(run, state, None)  # refuses older layouts; each of this one names its kind
    if state["kind"] == "centralized":
        if client is not None:
            raise ValueError(f"{run.root} is a centralized run; --client applies to federated runs only")
        splits = load_splits(cfg.data, cfg.run.seed)
        trained = build_client(cfg, build_model(cfg, splits.shape, splits.num_classes, splits.mean, splits.std), splits.num_classes, len(splits.train), device)
        trained.load_state_dict(state["client"])
        return [Victim("centralized", trained, None)]
    clients = sorted(int(pid) for pid in state["client_states"])
    if client is not None and client not in clients:
        raise ValueError(f"{run.root} has no state for client {client}; it holds clients {clients}")
    count = RunDir(run.root).read_results().get("clients", len(clients))
    victims = []
    for pid in [client] if client is not None else clients:
        saved = from_bytes(bytes(state["client_states"][pid].numpy()))
        split_client = SplitClient(cfg, pid, int(count), device, saved)
        victims.append(Victim(f"client {pid}", split_client.client, split_client))
    return victims


@dataclass(frozen=True)
class WireRecord:
    """What the curious server recorded of one victim (``intercept/intercept.pt``)."""

    target_z: Tensor
    """Smashed data of the victim's last round: the targets."""
    targets: Tensor
    """The images they came from, replayed from the client's data order."""
    target_index: Tensor
    """Their training-split indices."""
    earlier_z: Tensor
    """Smashed data of the victim's earlier rounds: intercepted, not scored."""
    earlier_index: Tensor
    """Training-split indices of their images."""


def wire_targets(run: RunDir, victim: Victim, most: int, seed: int) -> WireRecord | None:
    """The recording of the victim's rows: its last round as targets (from the latest round's
    reservoir when the victim trained in it, else the whole run's), at most ``most`` of them (a
    sample drawn with ``seed``), the others as further intercepts."""
    path = run.root / "intercept" / "intercept.pt"
    if victim.federated is None or not path.is_file():
        return None
    record = torch.load(path, map_location="cpu", weights_only=True)
    fields = {name: i for i, name in enumerate(record["fields"])}
    client, round_ = fields["client"], fields["round"]
    meta = record["meta"]
    mine = meta[:, client] == victim.federated.partition_id
    latest = record.get("latest")
    if latest is not None and bool((latest["meta"][:, client] == victim.federated.partition_id).any()):
        last_round = int(record["latest_round"])
        last = latest["meta"][:, client] == victim.federated.partition_id
        target_z, target_meta = latest["z"][last], latest["meta"][last]
    elif bool(mine.any()):
        last_round = int(meta[mine, round_].max())
        last = mine & (meta[:, round_] == last_round)
        target_z, target_meta = record["z"][last], meta[last]
    else:
        return None
    earlier = mine & (meta[:, round_] < last_round)
    earlier_z, earlier_meta = record["z"][earlier], meta[earlier]
    if len(target_z) > most:
        # With one or two clients the last round spans nearly the whole training split: scoring
        # all of it would leave the attacker, who learns from the split's other images, none.
        order = torch.randperm(len(target_z), generator=torch.Generator().manual_seed(seed))
        chosen, rest = order[:most].sort().values, order[most:].sort().values
        earlier_z, earlier_meta = torch.cat([earlier_z, target_z[rest]]), torch.cat([earlier_meta, target_meta[rest]])
        target_z, target_meta = target_z[chosen], target_meta[chosen]
    target_images, target_index = replay(victim.federated.loader, target_meta, fields, with_images=True)
    _, earlier_index = replay(victim.federated.loader, earlier_meta, fields, with_images=False)
    return WireRecord(target_z, target_images, target_index, earlier_z, earlier_index)


def replay(loader: BatchLoader, meta: Tensor, fields: dict[str, int], with_images: bool) -> tuple[Tensor, Tensor]:
    """The training-split indices (and, ``with_images``, the images) of recorded rows, found by
    replaying the client's data order from each row's epoch, batch and position."""
    images, indices = [], []
    built: dict[tuple[int, int], Tensor] = {}  # a batch is built (augmented) once for all its rows
    for row in meta.tolist():
        epoch, batch, position = (int(row[fields[k]]) for k in ("epoch", "batch", "position"))
        loader.set_epoch(epoch)
        indices.append(int(loader.batch_indices(batch)[position]))
        if with_images:
            if (epoch, batch) not in built:
                built[epoch, batch] = loader.batch(batch)[0].cpu()
            images.append(built[epoch, batch][position])
    return (torch.stack(images) if images else torch.zeros(0)), torch.tensor(indices, dtype=torch.long)


def attack_run(
    run_path: str, attack: str, mode: str, client: int | None = None, overrides: dict[str, Any] | None = None, log: Callable[[str], None] = print
) -> list[dict[str, Any]]:
    """Attack every victim of a run, append the results to its results.json, return them."""
    run = RunDir(run_path)
    if not run.results_path.is_file():
        raise FileNotFoundError(f"{run.root} has no results.json: not a finished fl-cem run")
    cfg = run.load_config().replace(**{"attack.name": attack, "attack.mode": mode, **(overrides or {})})
    if get_attack(attack).channel == "cem-stats":
        from fl_cem.attacks.channel import attack_channel

        return attack_channel(run, cfg, mode, client, log)
    device = resolve_device(cfg.run.device)
    splits = load_splits(cfg.data, cfg.run.seed)
    train_images = splits.train.images.float() / 255
    test_images = splits.test.images.float() / 255
    bounds = lower_bounds(run.read_results(), splits)
    board = Board(run.tb_dir)
    outcomes = []
    try:
        victims = load_victims(run, cfg, client, device)
        for victim in victims:
            tick = time.perf_counter()
            most = max(1, int(cfg.attack.holdout * len(train_images)))
            wire = wire_targets(run, victim, most, cfg.run.seed) if mode == "train" else None
            intercepted_images: Tensor | None = None
            if wire is not None:
                keep = torch.ones(len(train_images), dtype=torch.bool)
                keep[wire.target_index] = False
                aux_index = limit_aux(torch.nonzero(keep).flatten(), cfg.attack.aux_limit, cfg.run.seed)
                aux = train_images[aux_index]
                # earlier rounds' rows of images the attacker holds would be image/feature pairs
                intercepted_z = wire.earlier_z[~torch.isin(wire.earlier_index, aux_index)]
                targets, target_z, source = wire.targets, wire.target_z, "wire"
            else:
                pool, targets = split_images(mode, train_images, test_images, cfg.run.seed, cfg.attack.holdout)
                aux, left_out = split_aux(pool, cfg.attack.aux_limit, cfg.run.seed)
                # a deployed client sends only its queries; in training it sent every image
                intercepted_images = left_out if mode == "train" else None
                target_z, intercepted_z, source = None, None, "smashed"
            # a black-box attacker gets the client's public design, never its smashing function
            black_box = get_attack(attack).threat is Threat.BLACK_BOX
            seed = attacker_seed(cfg)
            access = public_design(cfg, splits.shape, splits.num_classes, splits.mean, splits.std, device) if black_box else victim.smash(seed)
            model = make_attack(cfg.attack, access, splits.shape, victim.client.smashed_shape(splits.shape), device, seed)
            epochs = getattr(model, "epochs", 0)
            tag = f"{attack}_{mode}" + (f"_client{victim.federated.partition_id}" if victim.federated else "") + repeat_tag(cfg)
            position = f" ({len(outcomes) + 1}/{len(victims)})" if len(victims) > 1 else ""
            bar = EpochProgress(epochs, f"{attack} {mode} {victim.name}{position}")

            def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
                bar.update(metrics)
                board.scalars(f"attack_{tag}", metrics, epoch)

            try:
                result = (
                    run_attack(
                        model, aux, targets, target_z, on_epoch, wire=victim.smash(seed),
                        intercepted_images=intercepted_images, intercepted_z=intercepted_z,
                    )
                    if black_box
                    else run_attack(model, aux, targets, target_z, on_epoch)
                )
            except BaseException as err:
                results = run.read_results()
                failed = {"attack": attack, "mode": mode, "victim": victim.name, "attack_seed": cfg.attack.seed, "status": "failed", "reason": failure_reason(err)}
                results.setdefault("attacks", []).append(failed)
                run.write_results(results)
                raise
            finally:
                bar.close()
            label = f"{attack}, {mode} mode, {victim.name}: MSE {result.metrics['mse']:.4f} (mean image {result.metrics['mse_mean_guess']:.4f})"
            grid = save_comparison(run.root / "attacks" / f"{tag}.png", result.originals, result.reconstructions, label=label)
            board.images(f"attack/{tag}", torch.cat([result.originals[:8], result.reconstructions[:8]]), 0)
            board.scalars(f"attack_{tag}/final", {k: v for k, v in result.metrics.items() if isinstance(v, float)}, 0)
            outcome = {
                "attack": attack,
                "mode": mode,
                "victim": victim.name,
                "attack_seed": cfg.attack.seed,
                "status": "finished",
                "threat": str(model.threat),
                "target_source": source,
                "targets": result.scored,
                "targets_offered": len(targets),
                "aux": len(aux),
                "intercepted": result.intercepted,
                "epochs": epochs,
                "metrics": result.metrics,
                "failed": not beats_mean_image(result.metrics),
                "fit": result.fit_metrics,
                **bound_fields(result.metrics["mse"], bounds),
                "time_s": time.perf_counter() - tick,
                "grid": str(grid),
            }
            if outcome["failed"]:
                log(
                    f"warning: {attack} {mode} on {victim.name} did not beat the mean image by {1 - MEAN_IMAGE_MARGIN:.0%} "
                    f"(MSE {result.metrics['mse']:.4f}, mean image {result.metrics['mse_mean_guess']:.4f}): recorded as failed and left "
                    "out of reports; train the attacker longer (attack.epochs) or give it more data before reading this as protection"
                )
            outcomes.append(outcome)
            results = run.read_results()
            results.setdefault("attacks", []).append(outcome)
            run.write_results(results)
    finally:
        board.close()
    return outcomes


def lower_bounds(results: dict[str, Any], splits: DataSplits) -> dict[str, float | None]:
    """Theorem 1's MSE bound estimates of the run's last epoch/round, when it was measured.

    ``""``: the recorded bound with the isotropic ``H(x)`` estimate; ``"_full"``: the same bound
    with the full-covariance estimate (:attr:`DataSplits.pixel_entropy`), derived from it here so
    that runs trained before it was recorded get it too.
    """
    cem = results.get("final", {}).get("cem", {})
    value = cem.get("mse_lower_bound", cem.get("mean_mse_lower_bound"))
    if value is None or not math.isfinite(float(value)) or float(value) <= 0:
        return {"": None, "_full": None}  # not measured, or sigma = 0 (no noise: the bound is 0 and a ratio meaningless)
    dim = math.prod(splits.shape)
    full = swap_entropy(float(value), dim, gaussian_entropy(dim, splits.pixel_var), splits.pixel_entropy)
    return {"": float(value), "_full": full}

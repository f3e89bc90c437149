"""Attack a finished federated run's CEM statistics channel: ``fl-cem attack --attack cem_stats``.

For each victim client: its latest upload recorded by the curious server
(``intercept/cem_stats.pt``, :class:`~fl_cem.federated.stats_recorder.StatsRecorder`), decoded
into one prototype per class (:class:`~fl_cem.attacks.cem_stats.CEMStatsAttack`) by a decoder
trained on auxiliary images through the client's own feature code; scored against the mean
image of each class over the client's partition. Auxiliary images: in ``train`` mode the
training split less the victim's partition (``attack.aux-limit`` caps them), in ``infer``
mode the test split. The server also always learns the merged statistics (the sum, whatever
the masking); the same decoding of the upload's refit's merge is scored against the same class means
(``aggregate``): under secure aggregation that is what is left to the server.

The statistics were computed by the encoder of the refit. With SplitFed the server holds it
(it averaged it, and the recording keeps it), and the victim's own :class:`Client` is loaded
with it (``encoder_source = "refit"``); otherwise the attacker has only the final weights
(``"final"``), a mismatch that favours the victim, as for the recorded smashed data.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch

from fl_cem.attacks.cem_stats import CEMStatsAttack, class_means, score_prototypes
from fl_cem.attacks.evaluate import MEAN_IMAGE_MARGIN, attacker_seed, beats_mean_image, limit_aux, make_attack, repeat_tag
from fl_cem.attacks.metrics import bound_fields, save_comparison
from fl_cem.attacks.run import load_victims
from fl_cem.cem import MixtureStats
from fl_cem.config import Config
from fl_cem.data import load_splits
from fl_cem.federated.secure_sum import decode
from fl_cem.federated.stats_recorder import latest_upload, refit_encoder, refit_of
from fl_cem.reporting.board import Board
from fl_cem.reporting.progress import EpochProgress
from fl_cem.reporting.run_dir import RunDir, failure_reason
from fl_cem.training.setup import resolve_device


def upload_stats(upload: dict[str, Any], masked: bool) -> MixtureStats:
    """The statistics a recorded upload claims, about the centres the server sent; a masked
    upload's words are read as if they were clear (all a server holding one upload can do)."""
    stats = upload["stats"]
    if masked:
        stats = {name: decode(stats[name].numpy().view("uint64"), name == "counts") for name in ("counts", "sums", "moments")}
    sent = upload["sent"]
    return MixtureStats(sent, stats["counts"].long(), stats["sums"].to(sent.dtype), stats["moments"].to(sent.dtype))


def attack_channel(run: RunDir, cfg: Config, mode: str, client: int | None, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Decode every victim's latest CEM upload into class prototypes, append the outcomes to results.json, return them."""
    path = run.root / "intercept" / "cem_stats.pt"
    if not path.is_file():
        raise FileNotFoundError(
            f"{run.root} has no {path.relative_to(run.root)}: the CEM statistics channel exists in federated runs with "
            "cem.lambda > 0 and cem.federation = global, recorded with attack.intercept-stats"
        )
    record = torch.load(path, map_location="cpu", weights_only=True)
    device = resolve_device(cfg.run.device)
    splits = load_splits(cfg.data, cfg.run.seed)
    train_images, test_images = splits.train.images.float() / 255, splits.test.images.float() / 255
    board = Board(run.tb_dir)
    outcomes = []
    try:
        victims = load_victims(run, cfg, client, device)
        for number, victim in enumerate(victims, 1):
            assert victim.federated is not None  # the recording exists only for federated runs
            pid = victim.federated.partition_id
            upload = latest_upload(record, pid)
            if upload is None:
                log(f"warning: the recording holds no CEM upload of {victim.name}; skipped")
                continue
            tick = time.perf_counter()
            partition = victim.federated.loader.indices.cpu()
            truth, present = class_means(train_images[partition], splits.train.labels.cpu()[partition], splits.num_classes)
            if mode == "train":
                keep = torch.ones(len(train_images), dtype=torch.bool)
                keep[partition] = False
                aux_index = limit_aux(torch.nonzero(keep).flatten(), cfg.attack.aux_limit, cfg.run.seed)
                aux, aux_labels = train_images[aux_index], splits.train.labels.cpu()[aux_index]
            else:
                aux, aux_labels = test_images, splits.test.labels.cpu()
            encoder = refit_encoder(record, upload)
            if encoder is not None:
                victim.client.encoder.load_state_dict(encoder)
            model = make_attack(cfg.attack, victim.channel(cfg.cem.before_defense), splits.shape, victim.client.smashed_shape(splits.shape), device, attacker_seed(cfg))
            assert isinstance(model, CEMStatsAttack)
            tag = f"cem_stats_{mode}_client{pid}" + repeat_tag(cfg)
            bar = EpochProgress(model.epochs, f"cem_stats {mode} {victim.name}" + (f" ({number}/{len(victims)})" if len(victims) > 1 else ""))

            def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
                bar.update(metrics)
                board.scalars(f"attack_{tag}", metrics, epoch)

            try:
                fit = model.fit(aux, on_epoch)
                # Under cem.stats-noise (public, as the protocol is) the uploaded second moments are
                # mostly noise: drawing from them decoded worse than the means at every noise level
                # measured (benchmarks/results/cem_channel_noise.json), so the attacker decodes the means.
                samples = 0 if cfg.cem.stats_noise > 0 else cfg.attack.stats_samples
                prototypes, _ = model.prototypes(upload_stats(upload, bool(record["masked"])), splits.num_classes, samples)
                metrics = score_prototypes(prototypes, truth, present, aux, aux_labels)
                refit = refit_of(record, upload) or record["merged"][-1]
                merged, _ = model.prototypes(MixtureStats.from_state_dict(refit["stats"]), splits.num_classes, samples)
                aggregate = score_prototypes(merged, truth, present, aux, aux_labels)
            except BaseException as err:
                results = run.read_results()
                results.setdefault("attacks", []).append(
                    {"attack": "cem_stats", "mode": mode, "victim": victim.name, "attack_seed": cfg.attack.seed, "status": "failed", "reason": failure_reason(err)}
                )
                run.write_results(results)
                raise
            finally:
                bar.close()
            shown = torch.nonzero(present).flatten()
            label = f"cem_stats, {mode} mode, {victim.name}: MSE {metrics['mse']:.4f} (mean image {metrics['mse_mean_guess']:.4f}, class means {metrics['mse_class_mean_guess']:.4f})"
            grid = save_comparison(run.root / "attacks" / f"{tag}.png", truth[shown], prototypes[shown].cpu(), n=len(shown), label=label)
            board.images(f"attack/{tag}", torch.cat([truth[shown], prototypes[shown].cpu()]), 0, nrow=len(shown))
            board.scalars(f"attack_{tag}/final", metrics, 0)
            board.scalars(f"attack_{tag}/aggregate", aggregate, 0)
            outcome = {
                "attack": "cem_stats",
                "mode": mode,
                "victim": victim.name,
                "attack_seed": cfg.attack.seed,
                "status": "finished",
                "threat": str(model.threat),
                "target_source": "cem-stats",
                "channel_masked": bool(record["masked"]),
                "channel_noise": cfg.cem.stats_noise,
                "channel_clip": cfg.cem.stats_clip,
                "stats_samples": samples,
                "upload_round": int(upload["round"]),
                "upload_epoch": int(upload["epoch"]),
                "encoder_source": "refit" if encoder is not None else "final",
                "targets": int(present.sum()),
                "aux": len(aux),
                "epochs": model.epochs,
                "metrics": metrics,
                "aggregate": aggregate,
                "failed": not beats_mean_image(metrics),
                "beats_class_means": bool(metrics["mse_to_class_mean"] < MEAN_IMAGE_MARGIN),
                "fit": fit,
                # Theorem 1 bounds one image's reconstruction error given its features, not a class prototype's
                **bound_fields(metrics["mse"], {"": None, "_full": None}),
                "time_s": time.perf_counter() - tick,
                "grid": str(grid),
            }
            if outcome["failed"]:
                log(
                    f"warning: cem_stats on {victim.name} did not beat the mean image by {1 - MEAN_IMAGE_MARGIN:.0%} "
                    f"(MSE {metrics['mse']:.4f}, mean image {metrics['mse_mean_guess']:.4f}): recorded as failed"
                    + (" (the upload was masked: the server holds only the sum)" if outcome["channel_masked"] else "")
                )
            outcomes.append(outcome)
            results = run.read_results()
            results.setdefault("attacks", []).append(outcome)
            run.write_results(results)
    finally:
        board.close()
    return outcomes


__all__ = ["attack_channel", "upload_stats"]

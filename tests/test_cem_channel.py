"""The CEM statistics channel: what a curious server records of it, what it decodes from it, and masking."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import pytest
import torch

from fl_cem.attacks.run import attack_run
from fl_cem.cem import MixtureStats
from fl_cem.config import Config
from fl_cem.federated.client_logic import SplitClient
from fl_cem.federated.secure_sum import FRACTION_BITS, encode, mask, unmask_sum
from fl_cem.federated.stats_recorder import StatsRecorder
from fl_cem.federated.wire import to_record
from strategies.split_strategy import SplitLearningStrategy

from .conftest import TINY, simulate

CHANNEL = {"cem.lambda": 0.01, "data.train-subset": 1000, "partition.num-partitions": 3}
"""Three clients on 1,000 digits train two rounds with global CEM: the channel carries a refit per round."""


def test_masked_uploads_sum_to_the_clear_sum_and_no_mask_is_reused() -> None:
    # Prepare: three clients' values, hand-checkable sums
    parts = [{"s": torch.tensor([1.5, -2.0]), "n": torch.tensor([3, 0])}, {"s": torch.tensor([0.25, 4.0]), "n": torch.tensor([1, 2])}, {"s": torch.tensor([-1.0, 0.5]), "n": torch.tensor([0, 5])}]

    # Execute
    uploads = [mask(p, pid, [0, 1, 2], key=7, nonce="1|0", integers={"n"}) for pid, p in enumerate(parts)]
    total = unmask_sum(uploads, integers={"n"})
    again = mask(parts[0], 0, [0, 1, 2], key=7, nonce="2|1", integers={"n"})

    # Assert: exact sums (these values are exact in fixed point); one upload is not its value's encoding
    assert torch.equal(total["n"], torch.tensor([4, 7]))
    assert torch.equal(total["s"], torch.tensor([0.75, 2.5], dtype=torch.float64))
    assert not np.array_equal(uploads[0]["s"].numpy().view(np.uint64), encode(parts[0]["s"], False))
    assert not torch.equal(again["s"], uploads[0]["s"])  # another refit, other masks
    assert FRACTION_BITS >= 20


def test_secure_merge_equals_the_clear_merge_and_hides_each_upload(tiny: Callable[..., Config]) -> None:
    # Prepare: three clients holding their features' statistics about shared centres
    clear_cfg = tiny(**{**CHANNEL, "data.train-subset": 300})
    secure_cfg = clear_cfg.replace(**{"cem.secure-aggregation": True})
    peers = [0, 1, 2]
    clear = [SplitClient(clear_cfg, pid, 3, torch.device("cpu"), None) for pid in peers]
    secure = [SplitClient(secure_cfg, pid, 3, torch.device("cpu"), None) for pid in peers]
    centres, _ = clear[0].local_centres(None, seed=0)

    def merge(clients: list[SplitClient], flag: bool) -> MixtureStats:
        strategy = SplitLearningStrategy(1.0, True, lambda z, y, c: {}, 2, 10, 0, secure=flag)
        replies = [SimpleNamespace(content={"stats": to_record(c.stats_upload(centres, peers, "1|0"))}) for c in clients]
        return strategy.merge_cem_stats(replies, centres)  # type: ignore[arg-type]

    # Execute
    plain, masked = merge(clear, False), merge(secure, True)
    upload = secure[0].stats_upload(centres, peers, "1|0")
    own = clear[0].local_stats(centres)

    # Assert: the merge is the same statistics (fixed point: 2^-24 per value and client) ...
    assert torch.equal(masked.counts, plain.counts)
    torch.testing.assert_close(masked.sums, plain.sums, rtol=0, atol=1e-5)
    torch.testing.assert_close(masked.moments, plain.moments, rtol=0, atol=1e-4)
    # ... while one upload is 64-bit words, nowhere near the client's counts
    assert upload["counts"].dtype == torch.int64 and not torch.equal(upload["counts"], own.counts)
    assert float(upload["counts"].abs().double().min()) > 1e6


def test_secure_aggregation_needs_the_global_federation() -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match="secure-aggregation"):
        Config.from_flat({"cem.secure-aggregation": True, "cem.federation": "local"})


def test_the_recorder_keeps_each_clients_latest_uploads_only() -> None:
    # Prepare
    recorder = StatsRecorder(per_client=2, masked=False)
    stats = MixtureStats(torch.zeros(2, 3), torch.tensor([1, 1]), torch.zeros(2, 3), torch.zeros(2, 3))

    # Execute: three refits of two clients
    for round_ in (1, 2, 3):
        uploads = {pid: {"counts": torch.tensor([round_, pid])} for pid in (0, 1)}
        recorder.offer(round_, round_ - 1, torch.zeros(2, 3), {}, uploads, stats, None)
    state = recorder.state_dict()

    # Assert
    assert [u["round"] for u in state["uploads"][0]] == [2, 3]
    assert [int(u["stats"]["counts"][1]) for u in state["uploads"][1]] == [1, 1]
    assert [m["round"] for m in state["merged"]] == [2, 3]


def channel_run(tmp_path: Path, secure: bool, noise: dict[str, float] | None = None) -> dict[str, Any]:
    """A federated run with global CEM (``noise``: ``cem.stats-*`` keys), then ``cem_stats`` on client 0 (8 decoder epochs)."""
    cfg = Config.from_flat({**TINY, **CHANNEL, "run.output-dir": str(tmp_path / "runs"), "cem.secure-aggregation": secure, **(noise or {})})
    simulate(cfg, num_clients=3)
    run = tmp_path / "runs" / "tiny"
    record = torch.load(run / "intercept" / "cem_stats.pt", weights_only=True)
    results = json.loads((run / "results.json").read_text())
    [outcome] = attack_run(str(run), "cem_stats", "train", 0, {"attack.epochs": 8}, log=lambda _: None)
    return {"outcome": outcome, "record": record, "results": results}


def test_cem_stats_recovers_class_prototypes_from_clear_uploads(tmp_path: Path) -> None:
    # Execute
    result = channel_run(tmp_path, secure=False)
    outcome, record = result["outcome"], result["record"]

    # Assert: both rounds' refits were recorded for all three clients, with SplitFed's encoder
    assert sorted(record["uploads"]) == [0, 1, 2] and [m["round"] for m in record["merged"]] == [1, 2]
    assert outcome["encoder_source"] == "refit" and not outcome["channel_masked"]
    # the prototypes beat the global mean image by far (measured 0.02-0.03 of it) and the attacker's own class means
    metrics = outcome["metrics"]
    assert not outcome["failed"] and metrics["mse"] < 0.25 * metrics["mse_mean_guess"]
    assert metrics["mse"] < metrics["mse_class_mean_guess"]
    assert Path(outcome["grid"]).is_file()


def test_cem_stats_fails_on_masked_uploads_but_the_sum_still_shows_the_classes(tmp_path: Path) -> None:
    # Execute
    result = channel_run(tmp_path, secure=True)
    outcome, record = result["outcome"], result["record"]

    # Assert: what the server recorded of one client is masked words; decoded, they are no better than the mean image
    assert record["masked"] and record["uploads"][0][-1]["stats"]["counts"].dtype == torch.int64
    assert outcome["channel_masked"] and outcome["failed"]
    assert outcome["metrics"]["mse"] > outcome["metrics"]["mse_mean_guess"]
    # the merged sum it must learn still decodes to the federation's class prototypes
    assert outcome["aggregate"]["mse"] < 0.25 * outcome["aggregate"]["mse_mean_guess"]

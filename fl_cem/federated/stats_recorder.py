"""The curious server on the CEM statistics channel: what each client uploaded at each global refit.

With ``cem.federation = global`` a client uploads, per refit, its local k-means centres with
their counts (step 1) and its per-cluster counts, sums and second moments about the server's
centres (step 2); the per-client cluster means ``c_j + S_j / n_j`` follow exactly, and an
inversion model turns them into class prototypes of the client's data
(``fl_cem/attacks/cem_stats.py``). Like :class:`~fl_cem.federated.recorder.Interceptor` for
the smashed data, this keeps what the server received: for each client its latest
``attack.intercept-stats-max`` uploads as they arrived (masked words under
``cem.secure-aggregation``), and per refit (as many) the merged statistics, which the server
learns either way, and the encoder the clients computed their statistics with where the server
holds it: SplitFed's average, which every client loaded before the refit (none with vanilla
split learning, or where a refit within a round follows no average).
"""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any

from torch import Tensor

from fl_cem.cem import MixtureStats
from fl_cem.reporting.run_dir import atomic_torch_save


class StatsRecorder:
    """Bounded record of the CEM uploads per client and of the merged statistics per refit."""

    def __init__(self, per_client: int, masked: bool) -> None:
        self.per_client = per_client
        self.masked = masked
        self.uploads: dict[int, deque[dict[str, Any]]] = {}
        self.merged: deque[dict[str, Any]] = deque(maxlen=max(per_client, 1))

    def offer(
        self, round_: int, epoch: int, sent: Tensor, centres: dict[int, dict[str, Tensor]], stats: dict[int, dict[str, Tensor]],
        merged: MixtureStats, encoder: dict[str, Tensor] | None,
    ) -> None:
        """One refit: the centres the server ``sent`` for step 2, each client's two uploads by partition id, the merge,
        and the clients' common ``encoder`` when the server knows it."""
        if self.per_client == 0:
            return
        for pid in sorted(stats):
            kept = self.uploads.setdefault(pid, deque(maxlen=self.per_client))
            kept.append({"round": round_, "epoch": epoch, "sent": sent.cpu(), "centres": centres.get(pid, {}), "stats": stats[pid]})
        self.merged.append(
            {"round": round_, "epoch": epoch, "stats": {k: v.cpu() for k, v in merged.state_dict().items()}, "encoder": dict(encoder or {})}
        )

    def state_dict(self) -> dict[str, Any]:
        return {"masked": self.masked, "uploads": {pid: list(kept) for pid, kept in self.uploads.items()}, "merged": list(self.merged)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.uploads = {int(pid): deque(kept, maxlen=self.per_client) for pid, kept in state["uploads"].items()}
        self.merged = deque(state["merged"], maxlen=self.merged.maxlen)

    def save(self, path: Path) -> None:
        atomic_torch_save(self.state_dict(), path)


def latest_upload(record: dict[str, Any], partition_id: int) -> dict[str, Any] | None:
    """A client's last recorded refit upload, or ``None`` when the recording has none of it."""
    kept = record["uploads"].get(partition_id) or record["uploads"].get(str(partition_id))
    return kept[-1] if kept else None


def refit_of(record: dict[str, Any], upload: dict[str, Any]) -> dict[str, Any] | None:
    """The recorded refit (merged statistics, encoder) an upload belongs to, if the recording still holds it."""
    return next((refit for refit in record["merged"] if (refit["round"], refit["epoch"]) == (upload["round"], upload["epoch"])), None)


def refit_encoder(record: dict[str, Any], upload: dict[str, Any]) -> dict[str, Tensor] | None:
    """The encoder an upload's statistics were computed with, when the server knew it and the recording kept it."""
    refit = refit_of(record, upload)
    return dict(refit["encoder"]) if refit is not None and refit["encoder"] else None

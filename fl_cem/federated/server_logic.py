"""The server's side of split learning, without any Flower types: the shared decoder."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from fl_cem.config import Config
from fl_cem.federated.recorder import Interceptor
from fl_cem.training.setup import build_model, build_server, lr_at, set_lr
from fl_cem.training.step import ServerParts, decoder_step


class SplitServer:
    """Hosts the decoder, serves smashed batches in the order the loop hands them over, records what it sees."""

    def __init__(self, cfg: Config, shape: tuple[int, int, int], num_classes: int, device: torch.device) -> None:
        self.cfg = cfg
        self.device = device
        channels = shape[0]
        # Normalisation lives in the encoder; the decoder's initial weights depend only on the seed.
        model = build_model(cfg, shape, num_classes, (0.0,) * channels, (1.0,) * channels)
        self.parts: ServerParts = build_server(cfg, model, device)
        self.smashed_shape = model.smashed_shape
        self.total_epochs = cfg.federated.rounds * cfg.federated.local_epochs
        self.interceptor = Interceptor(cfg.attack.intercept_max if cfg.attack.intercept else 0, cfg.run.seed)

    def serve(self, z: Tensor, labels: Tensor, sizes: list[int], epochs: list[int], client: int, round_: int, batches: list[int]) -> tuple[Tensor, dict[str, float]]:
        """Decoder steps for a chunk of batches from one client; returns dL/dz for each sample."""
        grads, loss, correct = [], 0.0, 0
        offset = 0
        for size, epoch, batch in zip(sizes, epochs, batches):
            zb = z[offset : offset + size].to(self.device)
            yb = labels[offset : offset + size].to(self.device)
            offset += size
            self.interceptor.offer(zb, yb, client, round_, epoch, batch)
            set_lr(self.parts.optimizer, lr_at(self.cfg.train, epoch, self.total_epochs))
            grad, metrics = decoder_step(self.parts, zb, yb)
            grads.append(grad)
            loss += float(metrics["loss"]) * size
            correct += int(metrics["correct"])
        return torch.cat(grads), {"loss_sum": loss, "correct": float(correct), "count": float(offset)}

    @torch.no_grad()
    def classify(self, z: Tensor, labels: Tensor) -> dict[str, float]:
        """Accuracy and loss of the decoder on one client's smashed evaluation data."""
        self.parts.decoder.eval()
        try:
            correct = 0
            loss = 0.0
            for start in range(0, len(z), self.cfg.train.eval_batch_size):
                zb = z[start : start + self.cfg.train.eval_batch_size].to(self.device)
                yb = labels[start : start + self.cfg.train.eval_batch_size].to(self.device)
                logits = self.parts.decoder(zb)
                loss += float(F.cross_entropy(logits, yb, reduction="sum"))
                correct += int((logits.argmax(1) == yb).sum())
        finally:
            self.parts.decoder.train()
        return {"accuracy": correct / max(len(z), 1), "loss": loss / max(len(z), 1)}

    def state_dict(self) -> dict[str, Any]:
        return {
            "decoder": self.parts.decoder.state_dict(),
            "optimizer": self.parts.optimizer.state_dict(),
            "interceptor": self.interceptor.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.parts.decoder.load_state_dict(state["decoder"])
        self.parts.optimizer.load_state_dict(state["optimizer"])
        self.interceptor.load_state_dict(state["interceptor"])

"""A run's folder: config, results.json, checkpoints and TensorBoard logs in one place.

Layout of ``<run.output-dir>/<run.name>/``::

    config.toml        the flat config the run used (re-loadable with --config)
    results.json       per-epoch/round metrics, final figures, attack results, commit, versions
    checkpoint.pt      the latest finished epoch or round (weights_only loadable)
    tb/                TensorBoard event files
    intercept/         smashed data a curious server recorded (federated runs)
    attacks/           reconstruction grids

Every write goes to a temporary file first and is renamed into place, so an interrupted run
never leaves a half-written results file or checkpoint behind.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from fl_cem.config import Config


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new file, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` through a temporary file (checkpoints survive a kill mid-write)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def config_toml(cfg: Config) -> str:
    """The flat config as TOML with quoted dotted keys (loadable by ``Config.load``)."""
    lines = []
    for key, value in cfg.to_flat().items():
        lines.append(f'"{key}" = {json.dumps(value)}')
    return "\n".join(lines) + "\n"


def git_commit() -> str:
    """The source commit, so every result can be traced to the code that made it.

    ``flwr run`` executes a bundled copy of the app outside any git checkout; an editable
    install still records where its source lives, and that checkout's commit is the code.
    """
    for folder in (Path(__file__).resolve().parent, _installed_source()):
        if folder is None:
            continue
        try:
            out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.SubprocessError):
            continue
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    return "unknown"


def _installed_source() -> Path | None:
    """The project folder of an editable ``pip install -e .`` (from its ``direct_url.json``)."""
    from importlib import metadata
    from urllib.parse import unquote, urlparse

    try:
        text = metadata.distribution("fl-cem").read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        return None
    url = json.loads(text).get("url", "") if text else ""
    return Path(unquote(urlparse(url).path)) if url.startswith("file://") else None


def environment() -> dict[str, str]:
    """Machine and library versions recorded next to every result."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cpus": str(os.cpu_count()),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def failure_reason(err: BaseException) -> str:
    """One line naming what went wrong: the exception's message, or that the run was interrupted."""
    if isinstance(err, KeyboardInterrupt):
        return "interrupted"
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[-1] if lines else ''}".rstrip(": ")


class RunFolderTaken(ValueError):
    """A run folder holds a checkpoint this run must not resume; nothing in it is touched."""


CHECKPOINT_LAYOUT = 2
"""Version of the checkpoint dict: 2 stores each party as its ``state_dict`` (``Client``/``Server``)."""


def refuse_other_kind(run: "RunDir", checkpoint: dict[str, Any], kind: str | None) -> None:
    """Refuse a checkpoint another entry point wrote (``kind``; ``None`` accepts either) or an older layout."""
    theirs = checkpoint.get("kind") or ("federated" if "client_states" in checkpoint else "centralized")
    if kind is not None and theirs != kind:
        raise RunFolderTaken(
            f"{run.root} holds a {theirs} run's checkpoint, and this is a {kind} run; "
            "choose another run.name, or set run.resume = false to start over there"
        )
    layout = checkpoint.get("layout", 1)
    if layout != CHECKPOINT_LAYOUT:
        raise RunFolderTaken(
            f"{run.root} holds a checkpoint in layout {layout}, written by an older fl-cem (this one reads layout "
            f"{CHECKPOINT_LAYOUT}); retrain it (run.resume = false) or use the fl-cem version that wrote it"
        )


class RunDir:
    """Paths and atomic writers for one run."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

    @classmethod
    def for_config(cls, cfg: Config) -> "RunDir":
        return cls(Path(cfg.run.output_dir) / cfg.run.name)

    @property
    def results_path(self) -> Path:
        return self.root / "results.json"

    @property
    def checkpoint_path(self) -> Path:
        return self.root / "checkpoint.pt"

    @property
    def config_path(self) -> Path:
        return self.root / "config.toml"

    @property
    def tb_dir(self) -> Path:
        return self.root / "tb"

    def read_results(self) -> dict[str, Any]:
        if not self.results_path.is_file():
            return {}
        return json.loads(self.results_path.read_text())

    def write_results(self, results: dict[str, Any]) -> None:
        atomic_write_bytes(self.results_path, json.dumps(results, indent=2, sort_keys=False).encode())

    @property
    def previous_results_path(self) -> Path:
        return self.root / "results.previous.json"

    def mark_failed(self, err: BaseException, kind: str) -> Path | None:
        """Record in results.json that the run failed and why, keeping what this run recorded.

        Only a results file this run started (``status = running``) is kept and updated. One left
        by an earlier run describes that run: results.json gets a failure record of its own (so
        ``status`` tells a script about the run it just started), and an earlier run's finished
        results are kept in ``results.previous.json`` rather than lost to a typo in the next run's
        config. Returns that file's path when it did so.
        """
        results = self.read_results()
        kept = None
        if results.get("status") != "running":
            if results.get("final"):
                atomic_write_bytes(self.previous_results_path, self.results_path.read_bytes())
                kept = self.previous_results_path
            results = {"kind": kind, "commit": git_commit(), "environment": environment()}
        results["status"] = "failed"
        results["reason"] = failure_reason(err)
        self.write_results(results)
        return kept

    def write_config(self, cfg: Config) -> None:
        atomic_write_bytes(self.config_path, config_toml(cfg).encode())

    def load_config(self) -> Config:
        if not self.config_path.is_file():
            raise FileNotFoundError(f"{self.root} is not a run folder: {self.config_path.name} is missing")
        return Config.load(self.config_path)

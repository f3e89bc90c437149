"""The real entry points, end to end: ``flwr run .`` on the local simulation, and the deployment
engine (a SuperLink and two SuperNodes on loopback). Slow: each starts Flower's daemons.

``flwr run`` exits 0 even when a run fails, so success is judged by the ``status`` and the
``final`` summary that the ServerApp writes to results.json. Every daemon a test starts is ended by its pid.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SMALL = "federated.rounds=1 data.train-subset=200 data.test-subset=100 model.arch='resnet20' model.cut=1 cem.clusters-per-class=2"


def flower_pids() -> set[int]:
    pids = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if b"flower-super" in cmdline or b"flwr-" in cmdline:
                pids.add(int(proc.name))
    return pids


@pytest.fixture
def flower_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A private FLWR_HOME; on exit, every Flower process started meanwhile is terminated."""
    before = flower_pids()
    env = {
        **os.environ,
        "FLWR_HOME": str(tmp_path / "flwr-home"),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    try:
        yield env
    finally:
        for pid in flower_pids() - before:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        time.sleep(1)
        for pid in flower_pids() - before:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def final_results(out: Path) -> dict:
    path = out / "federated" / "results.json"
    assert path.is_file(), f"no results at {path}"
    results = json.loads(path.read_text())
    assert results.get("status") == "finished" and "final" in results, f"the run did not finish: {results.get('reason')}"
    return results


@pytest.mark.slow
def test_flwr_run_local_simulation_completes(flower_env: dict[str, str], tmp_path: Path) -> None:
    # Execute
    out = tmp_path / "runs"
    proc = subprocess.run(
        [str(BIN / "flwr"), "run", ".", "--run-config", f"run.output-dir='{out}' {SMALL}", "--federation-config", "num-supernodes=3", "--stream"],
        cwd=ROOT, env=flower_env, capture_output=True, text=True, timeout=600,
    )
    # Assert
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = final_results(out)
    assert results["clients"] == 3
    assert results["rounds"][0]["test"]["clients"] == 3


@pytest.mark.slow
def test_deployment_engine_superlink_and_two_supernodes(flower_env: dict[str, str], tmp_path: Path) -> None:
    # Prepare: SuperLink on one loopback port, two SuperNodes told their partitions
    port = free_port()
    home = Path(flower_env["FLWR_HOME"])
    home.mkdir(parents=True)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "loopback"\n\n[superlink.loopback]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    logs = tmp_path / "logs"
    logs.mkdir()
    subprocess.Popen(
        [str(BIN / "flower-superlink"), "--insecure", "--disable-runtime-dependency-installation", "--port", str(port), "--database", str(tmp_path / "state.db")],
        env=flower_env, stdout=open(logs / "superlink.log", "w"), stderr=subprocess.STDOUT,
    )
    time.sleep(3)
    for pid in (0, 1):
        subprocess.Popen(
            [str(BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{port}", "--node-config", f"partition-id={pid} num-partitions=2", "--port", str(free_port())],
            env=flower_env, stdout=open(logs / f"supernode{pid}.log", "w"), stderr=subprocess.STDOUT,
        )
    out = tmp_path / "runs"
    # Execute: one round, eight batches per message (each message starts a ClientApp process here)
    proc = subprocess.run(
        [str(BIN / "flwr"), "run", ".", "loopback", "--run-config", f"run.output-dir='{out}' {SMALL} federated.chunk=8", "--stream"],
        cwd=ROOT, env=flower_env, capture_output=True, text=True, timeout=900,
    )
    # Assert
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = final_results(out)
    assert results["clients"] == 2
    assert len(results["rounds"]) == 1


MAIN_JOB_ACCURACY_FLOOR = 0.90
"""Issue 12: the README's main command (10 clients, defaults) reaches at least this test accuracy."""


@pytest.mark.slow
def test_readme_main_command_learns(flower_env: dict[str, str], tmp_path: Path) -> None:
    # Execute: the quick start's flwr run, writing under tmp_path
    out = tmp_path / "runs"
    proc = subprocess.run(
        [str(BIN / "flwr"), "run", ".", "--run-config", f"run.output-dir='{out}'", "--federation-config", "num-supernodes=10", "--stream"],
        cwd=ROOT, env=flower_env, capture_output=True, text=True, timeout=900,
    )
    # Assert
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "federated" / "results.json").read_text())
    assert results["status"] == "finished"
    assert results["clients"] == 10
    assert results["final"]["test_accuracy_mean"] >= MAIN_JOB_ACCURACY_FLOOR

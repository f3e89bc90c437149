"""Launch federated runs: in-process (sweeps, benchmarks, tests) and through ``flwr run``.

``run_federated`` runs the same ServerApp and ClientApp through Flower's simulation engine in
this process, with the config passed as overrides because ``run_simulation`` hands the apps an
empty run config. ``run_flwr`` (``fl-cem federated``) validates a config as ``fl-cem train``
does, then starts ``flwr run`` with it and reports the run's status.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from fl_cem.config import Config
from fl_cem.reporting.run_dir import RunDir

RAY_GPU_TIP = "Tip: In future versions of Ray, Ray will no longer override accelerator"
"""The start of the FutureWarning ``ray.init`` gives while Ray still hides GPUs from clients that
asked for none (``ray/_private/worker.py``). Only the message is silenced: setting
``RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=0``, as Ray suggests, would show every GPU to every
client, and with ``run.device = auto`` put them all on GPU 0 outside Ray's accounting."""


RUN_SIMULATION_DEPRECATED = "The `run_simulation` function is deprecated"
"""The start of the warning Flower 1.41 logs on every ``run_simulation`` call. It tells the caller
to use ``flwr run``: advice for this module (which needs the in-process engine to pass overrides
and keep results in memory), not for a researcher running a sweep, who would read it as a fault
of their own; ``fl-cem federated`` already goes through ``flwr run``."""


def hide_run_simulation_deprecation(record: logging.LogRecord) -> bool:
    """Logging filter: drop Flower's ``run_simulation`` deprecation warning, keep every other record."""
    # args is a tuple, or a mapping for a call with one dict argument (logging's rule)
    return not (isinstance(record.args, tuple) and record.args and str(record.args[0]).startswith(RUN_SIMULATION_DEPRECATED))


RAY_WORKER_NICENESS = "RAY_worker_niceness"
"""Ray's setting (``ray_constants.RAY_WORKER_NICENESS``) for the niceness of the worker processes it starts."""


def run_federated(
    cfg: Config, num_clients: int | None = None, client_cpus: float = 1.0, mods: list | None = None, client_gpus: float = 0.0
) -> dict[str, Any]:
    """Simulate ``num_clients`` supernodes (default ``partition.num-partitions``); returns results.json.

    ``client_gpus`` is each client's share of a GPU (``client-resources-num-gpus``): Ray shows a
    client the GPU it assigned, and one given none runs on the CPU (``resolve_device``).

    Raises
    ------
    RuntimeError
        When the run ended without a final summary (Flower reports some failures only in logs).
    """
    from flwr.simulation import run_simulation

    from fl_cem.client_app import make_client_app
    from fl_cem.server_app import make_server_app

    clients = num_clients or cfg.partition.num_partitions
    # Ray starts its workers, and so every client actor, at nice 15 (its worker_niceness), below
    # this process: under any other load on the machine the clients then starve while the server
    # waits for them (README, "1,000 clients"). Split learning's clients are on the critical path.
    os.environ.setdefault(RAY_WORKER_NICENESS, "0")
    # Ray workers need not share this process's working directory: pass absolute paths.
    absolute = {"run.output-dir": str(Path(cfg.run.output_dir).resolve())}
    if cfg.data.root:
        absolute["data.root"] = str(Path(cfg.data.root).expanduser().resolve())
    overrides = {**cfg.to_flat(), **absolute, "partition.num-partitions": clients}
    logging.getLogger("flwr").addFilter(hide_run_simulation_deprecation)  # once: addFilter ignores a repeat
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", RAY_GPU_TIP, FutureWarning)
        run_simulation(
            server_app=make_server_app(overrides),
            client_app=make_client_app(overrides, mods=mods),
            num_supernodes=clients,
            backend_config={"client_resources": {"num_cpus": client_cpus, "num_gpus": client_gpus}, "init_args": {"include_dashboard": False}},
        )
    results = RunDir.for_config(cfg.for_kind("federated")).read_results()
    if results.get("status") != "finished":
        raise RuntimeError(f"federated run {cfg.run.name} did not finish: {results.get('reason', 'no status recorded; see the log above')}")
    return results


def project_root() -> Path:
    """The Flower App folder (its pyproject.toml names the apps) that ``flwr run`` needs."""
    from fl_cem.reporting.run_dir import _installed_source

    for folder in (Path(__file__).resolve().parents[2], _installed_source()):
        if folder is not None and (folder / "pyproject.toml").is_file() and "[tool.flwr.app" in (folder / "pyproject.toml").read_text():
            return folder
    raise FileNotFoundError("fl-cem federated needs the project checkout (flwr run reads its pyproject.toml): install it with pip install -e .")


def run_config_toml(cfg: Config) -> str:
    """Every key of ``cfg`` as the nested tables ``flwr run --run-config FILE`` reads."""
    sections: dict[str, list[str]] = {}
    for key, value in cfg.to_flat().items():
        section, name = key.split(".", 1)
        sections.setdefault(section, []).append(f"{name} = {json.dumps(value)}")
    return "\n".join(f"[{section}]\n" + "\n".join(lines) + "\n" for section, lines in sections.items())


def run_flwr(cfg: Config, clients: int, federation_config: str = "") -> dict[str, Any]:
    """``flwr run`` of ``cfg`` on ``clients`` simulated supernodes, streamed; returns results.json.

    ``flwr run`` exits 0 whether the run finished or failed, so the outcome is read from the
    ``status`` the ServerApp writes; results older than this call do not count.
    """
    cfg = cfg.for_kind("federated")
    absolute = {"run.output-dir": str(Path(cfg.run.output_dir).resolve())}
    if cfg.data.root:
        absolute["data.root"] = str(Path(cfg.data.root).expanduser().resolve())
    cfg = cfg.replace(**absolute)
    run = RunDir.for_config(cfg)
    started = time.time()
    env = dict(os.environ)
    env.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    federation = " ".join(part for part in (f"num-supernodes={clients}", federation_config) if part)
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as file:
        file.write(run_config_toml(cfg))
    try:
        flwr = Path(sys.executable).with_name("flwr")
        command = [str(flwr if flwr.is_file() else "flwr"), "run", str(project_root()), "--run-config", file.name, "--federation-config", federation, "--stream"]
        subprocess.run(command, env=env, check=False)
    finally:
        os.unlink(file.name)
    if not run.results_path.is_file() or run.results_path.stat().st_mtime < started:
        return {"status": "failed", "reason": f"the run wrote no results to {run.results_path}; see flwr's output above"}
    return run.read_results()


def local_superlink_pids() -> list[int]:
    """Pids of the local SuperLink that ``flwr run`` started for this ``$FLWR_HOME``, and its helpers.

    Flower starts it as a detached daemon with no stop command and no pid file; its command line
    names its database under ``$FLWR_HOME/local-superlink/``, which tells it apart from other
    users' SuperLinks. Its ``flower-superexec`` children name its pid as ``--parent-pid``.
    """
    home = Path(os.environ.get("FLWR_HOME", Path.home() / ".flwr")).expanduser().resolve()
    marker = str(home / "local-superlink" / "state.db")
    commands: dict[int, list[str]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                commands[int(proc.name)] = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
    links = [pid for pid, args in commands.items() if any(a.endswith("flower-superlink") for a in args) and marker in args]
    helpers = [pid for pid, args in commands.items() if _argument(args, "--parent-pid") in {str(link) for link in links}]
    return links + helpers


def _argument(args: list[str], flag: str) -> str | None:
    """The value after ``flag`` in a command line, if any."""
    return args[args.index(flag) + 1] if flag in args[:-1] else None

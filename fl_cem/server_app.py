"""ServerApp: parse the run config once, then hand the grid to the federated run loop.

Any failure ends the app with one line naming the cause (Flower prints it last), after
results.json records ``status = failed`` with the same reason; ``flwr run`` itself exits 0
either way, so scripts read the status (README).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, NoReturn

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from flwr.superlink.grid.inmemory_grid import InMemoryGrid

from fl_cem.config import Config
from fl_cem.data.sources import check_source
from fl_cem.federated.server_loop import FederatedRun
from fl_cem.reporting.run_dir import RunDir, RunFolderTaken, failure_reason


class RunFailed(Exception):
    """The run could not go on; its message is the one line to read."""


def fail(message: str) -> NoReturn:
    """Print the cause on a line of its own, then end the app (Flower adds its exit-code help below)."""
    print(message, flush=True)
    raise RunFailed(message) from None


def make_server_app(overrides: Mapping[str, Any] | None = None) -> ServerApp:
    """A ServerApp whose run config is ``context.run_config`` updated with ``overrides``."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            cfg = Config.from_flat({**context.run_config, **(overrides or {})}).for_kind("federated")
        except ValueError as err:
            fail(f"fl-cem: error: {err}")
        run_dir = RunDir.for_config(cfg)
        try:
            if isinstance(grid, InMemoryGrid):  # the simulation engine: the clients' files are this machine's
                check_source(cfg.data.source, Path(cfg.data.root).expanduser() if cfg.data.root else None, cfg.data.download)
            FederatedRun(grid, cfg).run()
        except RunFolderTaken as err:
            fail(f"fl-cem: error: {err}")
        except BaseException as err:
            kept = run_dir.mark_failed(err, "federated")
            if not isinstance(err, Exception):
                raise
            earlier = f"; the earlier run's finished results are in {kept.name}" if kept else ""
            fail(f"fl-cem: error: {failure_reason(err)} (status 'failed' in {run_dir.results_path}{earlier})")

    return app


app = make_server_app()

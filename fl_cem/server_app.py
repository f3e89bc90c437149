"""ServerApp: parse the run config once, then hand the grid to the federated run loop.

Any failure ends the app with one line naming the cause (Flower prints it last), after
results.json records ``status = failed`` with the same reason; ``flwr run`` itself exits 0
either way, so scripts read the status (README). Bad input (a ``ValueError`` or a missing file)
or a client's failure shows that line alone; any other exception is a defect, and its own stack
comes first.
"""

from __future__ import annotations

import logging
import traceback
import warnings
from pathlib import Path
from typing import Any, Mapping, NoReturn

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from flwr.superlink.grid.inmemory_grid import InMemoryGrid

from fl_cem.config import Config
from fl_cem.data.sources import check_source
from fl_cem.federated.exchange import ClientFailed, TooFewClients
from fl_cem.federated.launch import RAY_GPU_TIP
from fl_cem.federated.server_loop import FederatedRun
from fl_cem.reporting.run_dir import RunDir, RunFolderTaken, failure_reason


EXPLAINED = (ValueError, FileNotFoundError, TooFewClients, ClientFailed)
"""Failures whose message says all a user needs (bad input, clients that failed or left); any
other exception is a defect, shown with its stack."""


class RunFailed(Exception):
    """The run could not go on; its message is the one line to read."""


def fail(message: str, defect: BaseException | None = None) -> NoReturn:
    """Print the cause on a line of its own, then end the app (Flower adds its exit-code help below).

    ``defect``: an exception that is not bad input; its stack is printed first, since the one
    line cannot say where the code went wrong.
    """
    if defect is not None:
        traceback.print_exception(defect)
    print(message, flush=True)
    raise RunFailed(message) from None


def hide_run_failed_stack(record: logging.LogRecord) -> bool:
    """Keep Flower's "raised an exception" line but drop a ``RunFailed``'s stack from it.

    That stack holds only Flower's frames and ``fail``'s; the cause is already on the line above,
    and a defect's own stack before it.
    """
    if record.exc_info and isinstance(record.exc_info[1], RunFailed):
        record.exc_info = record.exc_text = None
    return True


logging.getLogger("flwr").addFilter(hide_run_failed_stack)
# Under `flwr run` this module is loaded in Flower's simulation process while Ray starts there
# (before its `ray.init`, as Flower loads the ServerApp first): Ray's tip names a setting
# fl-cem must not use (RAY_GPU_TIP), which a newcomer would read as something to do.
warnings.filterwarnings("ignore", RAY_GPU_TIP, FutureWarning)


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
            explained = isinstance(err, EXPLAINED)
            fail(f"fl-cem: error: {failure_reason(err)} (status 'failed' in {run_dir.results_path}{earlier})", None if explained else err)

    return app


app = make_server_app()

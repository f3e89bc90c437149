"""ServerApp: parse the run config once, then hand the grid to the federated run loop."""

from __future__ import annotations

from typing import Any, Mapping

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fl_cem.config import Config
from fl_cem.federated.server_loop import FederatedRun


def make_server_app(overrides: Mapping[str, Any] | None = None) -> ServerApp:
    """A ServerApp whose run config is ``context.run_config`` updated with ``overrides``."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        cfg = Config.from_flat({**context.run_config, **(overrides or {})})
        FederatedRun(grid, cfg).run()

    return app


app = make_server_app()

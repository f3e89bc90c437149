"""The xdist grouping of the README's test command: everything that starts Ray or Flower runs on one worker."""

from __future__ import annotations

from pathlib import Path

from .conftest import starts_ray

TESTS = Path(__file__).resolve().parent


def test_modules_that_start_ray_or_flower_are_grouped_also_through_imported_helpers() -> None:
    # Execute
    grouped = {path.name for path in TESTS.glob("test_*.py") if starts_ray(path)}
    # Assert: direct users, and test_cem_channel_noise.py, which starts Flower only through test_cem_channel's helper
    assert {"test_flwr_cli.py", "test_ray_cluster.py", "test_federated.py", "test_fsha.py", "test_cem_channel.py", "test_cem_channel_noise.py", "test_run_status.py"} <= grouped
    assert not {"test_cem_loss.py", "test_defense_attack_mse.py", "test_config.py", "test_suite_groups.py"} & grouped

"""The xdist grouping of the README's test command: everything that starts Ray or Flower runs on one worker."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from .conftest import starts_ray

TESTS = Path(__file__).resolve().parent


def test_modules_that_start_ray_or_flower_are_grouped_also_through_imported_helpers() -> None:
    # Execute
    grouped = {path.name for path in TESTS.glob("test_*.py") if starts_ray(path)}
    # Assert: direct users, and test_cem_channel_noise.py, which starts Flower only through test_cem_channel's helper
    assert {"test_flwr_cli.py", "test_ray_cluster.py", "test_federated.py", "test_fsha.py", "test_cem_channel.py", "test_cem_channel_noise.py", "test_run_status.py"} <= grouped
    assert not {"test_cem_loss.py", "test_defense_attack_mse.py", "test_config.py"} & grouped


def test_the_readme_command_runs_a_groups_tests_on_one_worker() -> None:
    # Execute: two quick tests of a grouped module and two of an ungrouped one, on two workers
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-v", "-n", "2", "--dist", "loadgroup", "-p", "no:cacheprovider",
         "tests/test_run_status.py", "tests/test_config.py", "-k", "doc_line or stop_superlink or differences_ignore_where"],
        cwd=TESTS.parent, capture_output=True, text=True, timeout=300,
    )
    # Assert: the grouped tests carry the group in their ids and ran on the same worker
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    workers = re.findall(r"\[(gw\d+)\].*PASSED tests/test_run_status\.py::\w+@ray", proc.stdout)
    assert len(workers) == 2 and workers[0] == workers[1], proc.stdout[-2000:]

"""``flwr run`` on an existing Ray cluster: a head and one worker node on loopback (issue 16).

Flower's Ray backend calls ``ray.init()`` with no address
(``flwr/server/superlink/fleet/vce/backend/raybackend.py``, ``RayBackend.init_ray``), and Ray
then joins the cluster named by ``RAY_ADDRESS``, else the last one ``ray start`` wrote to
``/tmp/ray/ray_current_cluster``, else starts a private one
(``ray/_private/services.py::get_ray_address_from_environment``). The simulation process
inherits its environment from the local SuperLink that ``flwr run`` starts, so ``RAY_ADDRESS``
must be set when that SuperLink starts. This cluster lives in its own temp dir, so a
``ray.init()`` elsewhere on the machine that names no address does not find it, and this run
joins it only through ``RAY_ADDRESS``.

Every process started here is stopped by its pid: ``ray start --block`` stays the parent of
its node's processes and ends them on SIGTERM; ``ray stop`` would end every Ray on the machine.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from fl_cem.federated.launch import local_superlink_pids

from .test_flwr_cli import BIN, ROOT, SMALL, final_results, free_port

NODE_START_TIMEOUT = 60.0
"""Seconds for a ``ray start`` to come up on a loaded two-core machine."""


def start_time(pid: int) -> str | None:
    """The process's start time in clock ticks (field 22 of /proc/PID/stat), None once it is gone.

    A pid and its start time together name one process, so a reused pid is never signalled.
    """
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def descendants(root: int) -> dict[int, str]:
    """Every live process below ``root``, with its start time."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(proc.name))
    found: dict[int, str] = {}
    stack = list(children.get(root, []))
    while stack:
        pid = stack.pop()
        started = start_time(pid)
        if started is not None:
            found[pid] = started
            stack.extend(children.get(pid, []))
    return found


def stop(processes: dict[int, str], grace: float = 20.0) -> None:
    """SIGTERM each process, then SIGKILL those still alive after ``grace`` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 0.0)):
        for pid, started in processes.items():
            if start_time(pid) == started:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and any(start_time(pid) == s for pid, s in processes.items()):
            time.sleep(0.5)


class RayNode:
    """One ``ray start --block`` in its own temp dir; ``stop`` ends it and everything it started."""

    def __init__(self, temp_dir: Path, args: list[str], env: dict[str, str]) -> None:
        self.temp_dir = temp_dir
        self.log = temp_dir.with_suffix(".log")
        self.output = open(self.log, "w")
        self.proc = subprocess.Popen(
            [str(BIN / "ray"), "start", "--block", "--temp-dir", str(temp_dir), "--node-ip-address", "127.0.0.1",
             "--dashboard-agent-listen-port", str(free_port()), "--object-store-memory", str(200 * 2**20),
             "--disable-usage-stats", *args],
            env=env, stdout=self.output, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def wait_started(self) -> None:
        """``ray start`` writes the cluster address into its temp dir once its node's processes are up."""
        deadline = time.monotonic() + NODE_START_TIMEOUT
        while not (self.temp_dir / "ray_current_cluster").is_file():
            assert self.proc.poll() is None, f"ray start exited: {self.log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"ray start did not come up: {self.log.read_text()[-3000:]}"
            time.sleep(0.5)

    def logs(self) -> Path:
        """The node's session log folder."""
        return self.temp_dir / "session_latest" / "logs"

    def stop(self) -> None:
        """SIGTERM lets ``ray start`` end its node's processes; any left over are ended by pid."""
        stop({self.proc.pid: start_time(self.proc.pid) or "", **descendants(self.proc.pid)})
        self.proc.wait(timeout=10)
        self.output.close()


def wait_for_cpus(address: str, cpus: int, env: dict[str, str]) -> None:
    """Wait until ``ray status`` counts ``cpus`` CPUs: a node is listed a few seconds after it started."""
    deadline = time.monotonic() + NODE_START_TIMEOUT
    while True:
        status = subprocess.run([str(BIN / "ray"), "status", "--address", address], env=env, capture_output=True, text=True, timeout=120)
        if f"/{cpus}.0 CPU" in status.stdout:
            return
        assert time.monotonic() < deadline, f"the cluster never had {cpus} CPUs: {status.stdout}{status.stderr}"
        time.sleep(2)


@pytest.fixture
def cluster_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """A private FLWR_HOME and local SuperLink ports; on exit, that SuperLink is stopped by pid."""
    env = {
        **os.environ,
        "FLWR_HOME": str(tmp_path / "flwr-home"),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        # flwr recognises "its" local SuperLink only by these ports: a SuperLink another job
        # started on the defaults would be reused, with that job's environment (no RAY_ADDRESS).
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
        "FLWR_LOCAL_CONTROL_API_PORT": str(free_port()),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    monkeypatch.setenv("FLWR_HOME", env["FLWR_HOME"])  # local_superlink_pids reads it
    yield env
    stop({pid: started for pid in local_superlink_pids() if (started := start_time(pid)) is not None}, grace=5.0)


@pytest.mark.slow
def test_flwr_run_joins_an_existing_ray_cluster_through_ray_address(cluster_env: dict[str, str], tmp_path: Path) -> None:
    # Prepare: a head with one CPU and a worker node with one CPU, each in its own short temp
    # dir (Ray's socket paths must stay under about 107 characters)
    root = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))
    port = free_port()
    head = RayNode(root / "head", ["--head", "--port", str(port), "--ray-client-server-port", str(free_port()),
                                   "--include-dashboard", "false", "--num-cpus", "1", "--num-gpus", "0"], cluster_env)
    worker: RayNode | None = None
    try:
        head.wait_started()
        worker = RayNode(root / "worker", ["--address", f"127.0.0.1:{port}", "--num-cpus", "1", "--num-gpus", "0"], cluster_env)
        worker.wait_started()
        wait_for_cpus(f"127.0.0.1:{port}", 2, cluster_env)
        out = tmp_path / "runs"
        # Execute: two supernodes of one CPU each, so Flower's actor pool needs both nodes
        tick = time.monotonic()
        proc = subprocess.run(
            [str(BIN / "flwr"), "run", ".", "--run-config", f"run.output-dir='{out}' {SMALL}",
             "--federation-config", "num-supernodes=2 client-resources-num-cpus=1", "--stream"],
            cwd=ROOT, env={**cluster_env, "RAY_ADDRESS": f"127.0.0.1:{port}"}, capture_output=True, text=True, timeout=600,
        )
        elapsed = time.monotonic() - tick
        # Assert: the run finished and a Flower client actor ran
        # on the worker node (a private Ray instance has no such node)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        results = final_results(out)
        assert results["clients"] == 2
        actors = [log.name for log in worker.logs().glob("worker-*.out") if ":actor_name:ClientAppActor" in log.read_text(errors="replace")]
        assert actors, f"no ClientAppActor ran on the worker node; its logs: {sorted(p.name for p in worker.logs().iterdir())}"
        print(f"flwr run on the existing cluster: {elapsed:.0f} s; client actors on the worker node: {actors}")
    finally:
        if worker is not None:
            worker.stop()
        head.stop()
        shutil.rmtree(root, ignore_errors=True)

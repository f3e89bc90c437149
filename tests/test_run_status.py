"""Every run says whether it finished, run folders of different kinds never collide, and a
failure under ``flwr run`` names its cause fast (issue 14)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from fl_cem.cli import main
from fl_cem.config import Config
from fl_cem.federated.exchange import client_cause
from fl_cem.reporting.run_dir import RunDir, RunFolderTaken, failure_reason, git_commit, refuse_other_kind
from fl_cem.training.centralized import train_centralized

from .test_flwr_cli import BIN, ROOT, flower_env  # noqa: F401  (fixture)


def test_a_finished_run_says_so_with_its_commit(tiny: Callable[..., Config]) -> None:
    # Execute
    cfg = tiny(**{"train.epochs": 1})
    train_centralized(cfg, log=lambda _: None)
    # Assert
    results = RunDir.for_config(cfg).read_results()
    assert results["status"] == "finished"
    assert results["commit"] == git_commit() != "unknown"


def test_an_interrupted_run_is_failed_and_keeps_its_epochs(tiny: Callable[..., Config]) -> None:
    # Prepare
    cfg = tiny(**{"train.epochs": 3})

    def interrupt(epoch: int, record: dict[str, Any]) -> None:
        if epoch == 1:
            raise KeyboardInterrupt

    # Execute
    with pytest.raises(KeyboardInterrupt):
        train_centralized(cfg, on_epoch_end=interrupt, log=lambda _: None)
    # Assert
    results = RunDir.for_config(cfg).read_results()
    assert results["status"] == "failed" and results["reason"] == "interrupted"
    assert len(results["epochs"]) == 2


def test_default_names_keep_centralized_and_federated_apart() -> None:
    cfg = Config()
    assert cfg.for_kind("centralized").run.name == "centralized"
    assert cfg.for_kind("federated").run.name == "federated"
    assert cfg.replace(**{"run.name": "mine"}).for_kind("federated").run.name == "mine"


def test_resuming_a_checkpoint_of_another_kind_is_refused(tiny: Callable[..., Config], tmp_path: Path) -> None:
    # Prepare: a centralized run, then a federated-style checkpoint in the same folder
    cfg = tiny(**{"train.epochs": 1})
    train_centralized(cfg, log=lambda _: None)
    run = RunDir.for_config(cfg)
    before = run.read_results()
    # Execute / Assert: both directions, with what to do
    with pytest.raises(RunFolderTaken, match="holds a centralized run's checkpoint.*choose another run.name"):
        refuse_other_kind(run, torch.load(run.checkpoint_path, weights_only=True), "federated")
    torch.save({"client_states": {}, "config": cfg.to_flat()}, run.checkpoint_path)
    with pytest.raises(RunFolderTaken, match="holds a federated run's checkpoint"):
        train_centralized(cfg, log=lambda _: None)
    assert run.read_results() == before  # the other run's results are left alone


def test_failure_reasons_are_one_line() -> None:
    assert failure_reason(ValueError("first\nsecond line")) == "ValueError: second line"
    report = "<class 'flwr.clientapp.ClientAppException'>:<'Exception ClientAppException occurred. Message: data.root /x does not exist'>"
    assert client_cause(report) == "data.root /x does not exist"


def test_a_defect_shows_its_own_stack_and_flower_logs_no_other(capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare: a defect (not bad input) in the server's code
    from fl_cem.server_app import RunFailed, fail, hide_run_failed_stack

    try:
        {}["missing"]
    except KeyError as err:
        defect = err
    # Execute
    with pytest.raises(RunFailed) as raised:
        fail("fl-cem: error: KeyError: 'missing'", defect)
    printed = capsys.readouterr()
    ended = logging.LogRecord("flwr", logging.ERROR, __file__, 1, "%s raised an exception", ("Simulation",), (RunFailed, raised.value, raised.value.__traceback__))
    other = logging.LogRecord("flwr", logging.ERROR, __file__, 1, "%s raised an exception", ("Simulation",), (KeyError, defect, defect.__traceback__))
    # Assert: the defect's own frame is shown, the one line after it; Flower's record of the
    # RunFailed loses its stack (Flower's frames and fail's), any other exception keeps its own
    assert '{}["missing"]' in printed.err and printed.out.strip() == "fl-cem: error: KeyError: 'missing'"
    assert hide_run_failed_stack(ended) and ended.exc_info is None
    assert hide_run_failed_stack(other) and other.exc_info is not None
    assert hide_run_failed_stack in logging.getLogger("flwr").filters


def test_fl_cem_federated_rejects_a_bad_key_before_starting_flower(capsys: pytest.CaptureFixture[str]) -> None:
    # Execute
    code = main(["federated", "--set", "train.lrr=0.01"])
    # Assert
    assert code == 2
    assert "unknown config key 'train.lrr' (did you mean 'train.lr'?)" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize(
    ("overrides", "cause"),
    [
        ("train.lr=-1", "fl-cem: error: train.lr must be > 0; got -1.0"),
        ("data.source='imagefolder' data.root='/nonexistent/data.tar.gz'", "data.root /nonexistent/data.tar.gz does not exist"),
    ],
)
def test_flwr_run_names_the_cause_within_a_minute(flower_env: dict[str, str], tmp_path: Path, overrides: str, cause: str) -> None:
    # Execute
    out = tmp_path / "runs"
    tick = time.monotonic()
    proc = subprocess.run(
        [str(BIN / "flwr"), "run", ".", "--run-config", f"run.output-dir='{out}' {overrides}", "--federation-config", "num-supernodes=2", "--stream"],
        cwd=ROOT, env=flower_env, capture_output=True, text=True, timeout=300,
    )
    elapsed = time.monotonic() - tick
    # Assert: the cause is printed, without a stack (bad input is not a defect); where a run
    # folder exists it records the failure
    assert cause in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert elapsed < 60, elapsed
    results = out / "federated" / "results.json"
    if "data.root" in overrides:
        recorded = json.loads(results.read_text())
        assert recorded["status"] == "failed" and cause in recorded["reason"]


@pytest.mark.slow
def test_fl_cem_federated_exits_non_zero_when_the_run_fails(flower_env: dict[str, str], tmp_path: Path) -> None:
    # Prepare: a small run that finishes, and the same run asking for more clients than exist
    out = tmp_path / "runs"
    args = ["federated", "--clients", "2", "--set", f"run.output-dir={out}", "--set", "federated.rounds=1",
            "--set", "data.train-subset=200", "--set", "data.test-subset=100", "--set", "model.arch=resnet20", "--set", "model.cut=1"]
    # Execute
    finished = subprocess.run([sys.executable, "-m", "fl_cem.cli", *args], env=flower_env, capture_output=True, text=True, timeout=600)
    failed = subprocess.run([sys.executable, "-m", "fl_cem.cli", *args, "--set", "federated.min-clients=5"], env=flower_env, capture_output=True, text=True, timeout=600)
    # Assert
    assert finished.returncode == 0, finished.stdout[-2000:] + finished.stderr[-2000:]
    assert "finished: test accuracy" in finished.stdout
    assert failed.returncode == 1
    assert "fl-cem: run failed: TooFewClients" in failed.stderr


def test_every_key_has_a_doc_line_for_fl_cem_defaults() -> None:
    from fl_cem.config import field_docs

    docs = field_docs()
    assert set(docs) == set(Config.defaults_flat())
    assert docs["train.warmup-epochs"].startswith("Linear learning-rate warm-up")


def test_stop_superlink_ends_only_this_homes_superlink(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: a stand-in process whose command line looks like this FLWR_HOME's local SuperLink
    home = tmp_path / "flwr-home"
    database = home / "local-superlink" / "state.db"
    fake = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "flower-superlink", "--database", str(database)])
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "flower-superlink", "--database", str(tmp_path / "x.db")])
    monkeypatch.setenv("FLWR_HOME", str(home))
    try:
        # Execute
        code = main(["stop-superlink"])
        # Assert
        assert code == 0
        assert fake.wait(timeout=10) != 0
        assert other.poll() is None
    finally:
        fake.kill()
        other.kill()


def test_attack_progress_prints_eta_lines_when_not_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    from fl_cem.reporting.progress import EpochProgress

    # Prepare: not a terminal, a line at most every 0 s, i.e. every epoch
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    monkeypatch.delenv("FL_CEM_PROGRESS", raising=False)
    lines: list[str] = []
    progress = EpochProgress(3, "decoder train client 0 (1/2)", every=0.0, log=lines.append)
    # Execute
    for loss in (0.3, 0.2, 0.1):
        progress.update({"loss": loss})
    progress.close()
    # Assert
    assert len(lines) == 3
    assert lines[-1].startswith("decoder train client 0 (1/2): epoch 3/3 | elapsed") and "ETA" in lines[-1] and "loss 0.1" in lines[-1]


def test_a_resumed_run_counts_its_rounds_from_the_start_and_its_eta_from_its_own_pace() -> None:
    from fl_cem.reporting.progress import eta_line

    # a run resumed after round 2 of 10 has finished one round in 110 s
    assert eta_line(1, 8, 110.0, "round", before=2) == "round 3/10 | elapsed 110s | ETA 770s"


def test_a_failure_before_a_run_starts_does_not_relabel_the_folders_earlier_run(tmp_path: Path) -> None:
    # Prepare: a finished earlier run in the folder
    run = RunDir(tmp_path / "federated")
    run.write_results({"kind": "federated", "status": "finished", "rounds": [{"round": 1}], "final": {"rounds": 1}})
    earlier = run.results_path.read_bytes()
    # Execute: the next run fails while discovering its clients, before it wrote anything
    kept = run.mark_failed(RuntimeError("a client failed on its first message: no data"), "federated")
    # Assert: a failure record of its own, not the earlier run's rounds marked failed, and the
    # earlier run's finished results kept beside it, byte for byte
    results = run.read_results()
    assert results["status"] == "failed" and "no data" in results["reason"]
    assert "rounds" not in results and "final" not in results
    assert kept == run.previous_results_path and kept.read_bytes() == earlier


def test_work_killed_before_it_logged_leaves_no_empty_event_file(tmp_path: Path) -> None:
    from fl_cem.reporting.board import Board

    board = Board(tmp_path / "tb")
    board.close()
    assert not (tmp_path / "tb").exists()
    board = Board(tmp_path / "tb")
    board.scalars("attack", {"loss": 1.0}, 1)
    board.close()
    assert any((tmp_path / "tb").iterdir())


def test_a_checkpoint_in_an_older_layout_is_refused_with_what_to_do(tiny: Callable[..., Config]) -> None:
    # Prepare: a finished run whose checkpoint is rewritten without its layout (fl-cem before Client/Server)
    cfg = tiny(**{"train.epochs": 1})
    train_centralized(cfg, log=lambda _: None)
    run = RunDir.for_config(cfg)
    state = torch.load(run.checkpoint_path, weights_only=True)
    torch.save({k: v for k, v in state.items() if k != "layout"}, run.checkpoint_path)
    # Execute / Assert
    with pytest.raises(RunFolderTaken, match="checkpoint in layout 1, written by an older fl-cem.*run.resume = false"):
        train_centralized(cfg.replace(**{"train.epochs": 2}), log=lambda _: None)


def test_in_process_runs_hide_flowers_run_simulation_deprecation_and_nothing_else() -> None:
    import logging

    from flwr.simulation.run_simulation import warn_deprecated_feature

    from fl_cem.federated.launch import hide_run_simulation_deprecation

    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    logger = logging.getLogger("flwr")
    handler = Keep()
    handler.addFilter(hide_run_simulation_deprecation)
    logger.addHandler(handler)
    try:
        warn_deprecated_feature("The `run_simulation` function is deprecated and will be removed")
        warn_deprecated_feature("something else")
        logger.warning("a client did not answer")
        logger.warning("%(node)s left", {"node": "node 3"})
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage().split("\n")[0] for r in seen] == ["DEPRECATED FEATURE: something else", "a client did not answer", "node 3 left"]

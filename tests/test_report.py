"""Reports: the exponential fit, means over seeds, paired averages and gains, the written files."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fl_cem.config import Config
from fl_cem.reporting.collect import RunRecord, latest_attacks, run_values
from fl_cem.reporting.figures import missing_panel_note
from fl_cem.reporting.fit import exponential_fit
from fl_cem.reporting.report import _failed_or, write_report
from fl_cem.reporting.table import build_table, mean_std


def record(method: str, lam: float, seed: int, execution: str = "centralized", sigma: float = 0.025, **values: float) -> RunRecord:
    config = {"defense.name": method, "cem.lambda": lam, "run.seed": seed, "noise.sigma": sigma}
    return RunRecord(f"{execution}_{method}_{lam:g}_{seed}", execution, "done", config, dict(values))


def test_exponential_fit_recovers_rate_scale_and_perfect_correlation() -> None:
    # Prepare: MSE = 0.5 exp(0.004 H) on H in [-1000, -800], exactly
    x = np.linspace(-1000, -800, 9)
    y = 0.5 * np.exp(0.004 * x)

    # Execute
    fit = exponential_fit(x, y)

    # Assert
    assert fit.rate == pytest.approx(0.004, rel=1e-9)
    assert fit.log_scale == pytest.approx(math.log(0.5), abs=1e-7)
    assert fit.r_log == pytest.approx(1.0, abs=1e-12)
    assert fit.n == 9
    assert fit(np.array([-900.0]))[0] == pytest.approx(0.5 * math.exp(-3.6), rel=1e-9)


def test_exponential_fit_with_multiplicative_noise_stays_close_and_strongly_correlated() -> None:
    # Prepare: a decreasing relation, log-normal scatter of 2 %
    rng = np.random.default_rng(0)
    x = np.linspace(-50, 50, 40)
    y = 0.02 * np.exp(-0.03 * x) * np.exp(rng.normal(0, 0.02, size=x.shape))

    # Execute
    fit = exponential_fit(x, y)

    # Assert: slope within 2 % of -0.03 (its standard error: 0.02 / (sqrt(40) * 29.6) = 1.1e-4, 0.4 %);
    # on the log scale the points are nearly a line, on the linear scale the curvature weakens r
    assert fit.rate == pytest.approx(-0.03, rel=0.02)
    assert math.exp(fit.log_scale) == pytest.approx(0.02, rel=0.02)
    assert fit.r_log < -0.999
    assert fit.r_log < fit.r_linear < -0.9


def test_exponential_fit_of_unrelated_points_has_zero_rate_and_correlation() -> None:
    # Prepare: log y = 1, -1, -1, 1 against x = 1..4: the x deviations -1.5, -.5, .5, 1.5 weight them to 0
    x = [1.0, 2.0, 3.0, 4.0]
    y = list(np.exp([1.0, -1.0, -1.0, 1.0]))

    # Execute
    fit = exponential_fit(x, y)

    # Assert
    assert fit.rate == pytest.approx(0.0, abs=1e-12)
    assert fit.r_log == pytest.approx(0.0, abs=1e-12)
    assert fit.log_scale == pytest.approx(0.0, abs=1e-12)


def test_exponential_fit_refuses_non_positive_mse() -> None:
    with pytest.raises(ValueError, match="y > 0"):
        exponential_fit([0.0, 1.0, 2.0], [0.1, 0.0, 0.2])


def test_mean_std_is_sample_deviation_and_undefined_for_one_seed() -> None:
    # Execute
    mean, std = mean_std([0.1, 0.3])
    single_mean, single_std = mean_std([0.7])

    # Assert: sqrt((0.1^2 + 0.1^2) / (2 - 1)) = 0.141421...
    assert (mean, std) == (pytest.approx(0.2), pytest.approx(0.1414213562))
    assert single_mean == 0.7 and math.isnan(single_std)


def hand_made() -> list[RunRecord]:
    """Two defenses without and with CEM over two seeds, and a No_defense row without a CEM twin."""
    rows: list[tuple[str, float, list[tuple[float, float, float]]]] = [
        ("A", 0.0, [(0.80, 0.010, 0.020), (0.90, 0.014, 0.020)]),
        ("A", 16.0, [(0.84, 0.015, 0.022), (0.86, 0.017, 0.026)]),
        ("B", 0.0, [(0.70, 0.030, 0.040), (0.70, 0.034, 0.040)]),
        ("B", 16.0, [(0.72, 0.036, 0.044), (0.66, 0.040, 0.048)]),
    ]
    records = [
        record(method, lam, seed, accuracy=acc, decoder_train_mse=train, decoder_infer_mse=infer)
        for method, lam, seeds in rows
        for seed, (acc, train, infer) in enumerate(seeds)
    ]
    records.append(record("none", 0.0, 0, sigma=0.0, accuracy=0.95, decoder_train_mse=0.001, decoder_infer_mse=0.001))
    return records


def test_rows_average_seeds_and_the_method_absorbs_keys_that_follow_the_defense() -> None:
    # Execute
    table = build_table(hand_made())

    # Assert: noise.sigma is 0 only for "none", so it is part of the method, not a column
    assert table.roles.method == ("defense.name", "noise.sigma") and table.roles.other == ()
    assert [(r.label, r.n) for r in table.rows] == [("A", 2), ("A+CEM", 2), ("B", 2), ("B+CEM", 2), ("none", 1)]
    a_off = table.rows[0]
    assert a_off.mean["accuracy"] == pytest.approx(0.85) and a_off.std["accuracy"] == pytest.approx(0.0707106781)
    assert a_off.mean["decoder_train_mse"] == pytest.approx(0.012) and a_off.std["decoder_infer_mse"] == pytest.approx(0.0)
    assert math.isnan(table.rows[4].std["accuracy"])


def test_averages_pair_methods_and_gains_match_hand_computation() -> None:
    # Execute
    (average,) = build_table(hand_made()).averages

    # Assert: A and B only ("none" has no CEM row). Row means:
    #   off: acc 0.85, 0.70; train 0.012, 0.032; infer 0.020, 0.040
    #   on:  acc 0.85, 0.69; train 0.016, 0.038; infer 0.024, 0.046
    assert average.methods == ["A", "B"]
    assert average.without == pytest.approx({"accuracy": 0.775, "decoder_train_mse": 0.022, "decoder_infer_mse": 0.030})
    assert average.with_cem == pytest.approx({"accuracy": 0.770, "decoder_train_mse": 0.027, "decoder_infer_mse": 0.035})
    # accuracy: difference -0.005; MSE: relative 0.005 / 0.022 and 0.005 / 0.030
    assert average.gain == pytest.approx({"accuracy": -0.005, "decoder_train_mse": 0.005 / 0.022, "decoder_infer_mse": 0.005 / 0.030})
    assert average.gain_train_mse == pytest.approx(0.2272727) and average.gain_infer_mse == pytest.approx(0.1666667)


PAPER_TABLE1 = {
    # method: (without CEM, with CEM), each (Acc., Dec. train, Dec. infer, GAN train, GAN infer)
    "bottleneck": ((90.87, 0.0036, 0.0041, 0.0039, 0.0045), (90.69, 0.0054, 0.0058, 0.0076, 0.0080)),
    "distcorr": ((89.52, 0.0074, 0.0082, 0.0079, 0.0088), (89.80, 0.0090, 0.0093, 0.0094, 0.0096)),
    "dropout": ((87.75, 0.0098, 0.0104, 0.0099, 0.0111), (87.53, 0.0129, 0.0134, 0.0132, 0.0142)),
    "patrol": ((89.58, 0.0245, 0.0293, 0.0257, 0.0307), (89.67, 0.0304, 0.0335, 0.0313, 0.0347)),
    "ressfl": ((89.68, 0.0146, 0.0240, 0.0158, 0.0243), (90.11, 0.0201, 0.0251, 0.0229, 0.0273)),
    "noise_nopeek": ((87.19, 0.0152, 0.0159, 0.0156, 0.0165), (87.08, 0.0174, 0.0174, 0.0173, 0.0178)),
    "noise_arl": ((87.78, 0.0290, 0.0336, 0.0304, 0.0342), (87.62, 0.0330, 0.0355, 0.0341, 0.0363)),
}
COLUMNS = ("accuracy", "decoder_train_mse", "decoder_infer_mse", "gan_train_mse", "gan_infer_mse")


def test_paper_table1_rows_reproduce_its_average_rows() -> None:
    # Prepare: the paper's rows, No_defense included (it has no CEM twin)
    records = [record("none", 0.0, 0, accuracy=0.9186, decoder_train_mse=0.0013, decoder_infer_mse=0.0014, gan_train_mse=0.0014, gan_infer_mse=0.0016)]
    for method, pair in PAPER_TABLE1.items():
        for lam, numbers in zip((0.0, 16.0), pair):
            values = dict(zip(COLUMNS, (numbers[0] / 100, *numbers[1:])))
            records.append(record(method, lam, 0, **values))

    # Execute
    (average,) = build_table(records).averages

    # Assert: "Average w/o CEM 88.91 0.0148 0.0179 0.0156 0.0185", "w/ CEM 88.92 0.0183 0.0200 0.0194 0.0211"
    # (the paper truncates: 0.014871 is printed 0.0148); gains 24.0 % / 12.9 % from its printed averages,
    # 23.8 % / 12.6 % from the exact ones
    printed_off = (0.8891, 0.0148, 0.0179, 0.0156, 0.0185)
    printed_on = (0.8892, 0.0183, 0.0200, 0.0194, 0.0211)
    assert len(average.methods) == 7
    for column, off, on in zip(COLUMNS, printed_off, printed_on):
        assert average.without[column] == pytest.approx(off, abs=1e-4)
        assert average.with_cem[column] == pytest.approx(on, abs=1e-4)
    assert average.gain_train_mse == pytest.approx(0.240, abs=0.003)
    assert average.gain_infer_mse == pytest.approx(0.129, abs=0.004)


def write_run(folder: Path, kind: str, config: dict[str, Any], final: dict[str, Any], mse: float, mean_image: float = 0.1) -> None:
    folder.mkdir(parents=True)
    metrics = {"mse": mse, "psnr": 20.0, "ssim": 0.5, "mse_mean_guess": mean_image}
    attack = {"attack": "decoder", "mode": "train", "victim": "v", "metrics": metrics, "time_s": 1.0}
    (folder / "results.json").write_text(json.dumps({"kind": kind, "config": config, "final": final, "attacks": [attack]}))


def test_an_attack_that_does_not_beat_the_mean_image_is_failed_and_left_out_of_gains(tmp_path: Path) -> None:
    # Prepare: without CEM the attack works (0.010 against a mean image of 0.060); with CEM it
    # sits at the mean image (0.058 > 0.9 * 0.060), which measures nothing about the defense
    config = {"defense.name": "bottleneck", "run.seed": 0}
    write_run(tmp_path / "off", "centralized", {**config, "cem.lambda": 0.0}, {"test_accuracy": 0.9}, 0.010, mean_image=0.060)
    write_run(tmp_path / "on", "centralized", {**config, "cem.lambda": 16.0}, {"test_accuracy": 0.88}, 0.058, mean_image=0.060)
    # Execute
    report = write_report(tmp_path)
    # Assert
    on = report["rows"][1]["mean"]
    assert "decoder_train_mse" not in on and on["decoder_train_failed"] == 1.0
    assert "decoder_train_mse" not in report["averages"][0]["gain"]
    assert "failed (mean image 0.0600)" in (tmp_path / "report" / "report.md").read_text()


def test_report_of_plain_run_folders_puts_centralized_and_federated_side_by_side(tmp_path: Path) -> None:
    # Prepare: the same two settings run centrally and federated, as folders without a sweep manifest
    for lam, acc, mse, hxz in ((0.0, 0.9, 0.010, -900.0), (16.0, 0.88, 0.015, -850.0)):
        config = {"defense.name": "bottleneck", "cem.lambda": lam, "run.seed": 0}
        write_run(tmp_path / f"c{lam:g}", "centralized", config, {"test_accuracy": acc, "cem": {"hxz_relative": hxz}}, mse)
        fed = {"test_accuracy_mean": acc - 0.1, "cem": {"mean_hxz_relative": hxz - 10, "global_hxz_relative": hxz - 5}}
        write_run(tmp_path / f"f{lam:g}", "federated", config, fed, 2 * mse)

    # Execute
    report = write_report(tmp_path)

    # Assert
    assert [(r["execution"], r["label"]) for r in report["rows"]] == [
        ("centralized", "bottleneck"),
        ("centralized", "bottleneck+CEM"),
        ("federated", "bottleneck"),
        ("federated", "bottleneck+CEM"),
    ]
    federated_cem = report["rows"][3]["mean"]
    assert federated_cem["accuracy"] == pytest.approx(0.78) and federated_cem["decoder_train_mse"] == pytest.approx(0.030)
    assert federated_cem["hxz_relative"] == -860.0 and federated_cem["global_hxz_relative"] == -855.0
    assert [a["gain"]["decoder_train_mse"] for a in report["averages"]] == [pytest.approx(0.5), pytest.approx(0.5)]
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "## Centralized and federated side by side" in markdown
    assert "| bottleneck+CEM | λ=16 | 88.00 | 0.0150 | 78.00 | 0.0300 |" in markdown
    # sigma was not varied: no Fig. 4a; lambda was: Fig. 4b; two points per execution: no Fig. 3 fit
    assert not any(name.startswith("fig4a") for name in report["figures"])
    assert any(name.startswith("fig4b") for name in report["figures"])
    assert report["fig3_fits"] == {}


def test_fig3_fits_each_lambda_of_a_noise_sweep_apart_and_reads_theorem_1s_rate_off_the_bound(tmp_path: Path) -> None:
    # Prepare: the paper's Fig. 3 sweep, sigma varied at lambda 16 (three runs: a fit) and at
    # lambda 0 (two runs: no fit); bound estimates exactly exp(2 H / d_x) of CIFAR's d_x = 3,072,
    # measured MSEs a third of them with twice the slope
    d_x = 3 * 32 * 32
    for lam, entropies in ((16.0, (-900.0, -600.0, -300.0)), (0.0, (-1400.0, -1000.0))):
        for sigma, hxz in zip((0.01, 0.1, 0.3), entropies):
            config = {"defense.name": "bottleneck", "cem.lambda": lam, "noise.sigma": sigma, "run.seed": 0}
            cem = {"hxz_relative": hxz, "mse_lower_bound": 0.06 * math.exp(2 * hxz / d_x)}
            write_run(tmp_path / f"s{sigma:g}_l{lam:g}", "centralized", config, {"test_accuracy": 0.8, "cem": cem}, 0.02 * math.exp(4 * hxz / d_x))

    # Execute
    report = write_report(tmp_path)

    # Assert: one fit, of the lambda-16 series, whose measured rate is twice the theorem's
    assert list(report["fig3_fits"]) == ["centralized, λ=16"]
    fit = report["fig3_fits"]["centralized, λ=16"]
    assert fit["theorem_rate"] == pytest.approx(2 / d_x) and fit["rate"] == pytest.approx(4 / d_x) and fit["n"] == 3
    assert "measured/theorem 2.00" in (tmp_path / "report" / "report.md").read_text()


def test_report_states_the_sweeps_compute_in_hours(tmp_path: Path) -> None:
    # Prepare: two runs of 1,800 s and 900 s of training, each with one attack of 1 s
    for name, train_s in (("a", 1800.0), ("b", 900.0)):
        write_run(tmp_path / name, "centralized", {"defense.name": name, "run.seed": 0}, {"test_accuracy": 0.9, "train_time_s": train_s}, 0.01)
        results = json.loads((tmp_path / name / "results.json").read_text())
        results["environment"] = {"machine": "x86_64", "cpus": "2", "date": "2026-12-05 23:00:00"}
        (tmp_path / name / "results.json").write_text(json.dumps(results))

    # Execute
    report = write_report(tmp_path)

    # Assert: 2,700 s of training and 2 s of attacks
    assert report["provenance"]["compute_s"] == {"train": 2700.0, "attack": 2.0}
    assert "0.75 h of training and attacks in all (0.75 h training, 0.00 h attacks)" in (tmp_path / "report" / "report.md").read_text()


def test_a_key_an_older_run_predates_counts_as_its_default_and_splits_no_row(tmp_path: Path) -> None:
    # Prepare: a pair whose CEM run was written before attack.unsplit-tv existed
    old = {"defense.name": "bottleneck", "cem.lambda": 16.0, "run.seed": 0}
    new = {"defense.name": "bottleneck", "cem.lambda": 0.0, "run.seed": 0, "attack.unsplit-tv": Config().attack.unsplit_tv}
    write_run(tmp_path / "old", "centralized", old, {"test_accuracy": 0.8, "cem": {"hxz_relative": -300.0}}, 0.02)
    write_run(tmp_path / "new", "centralized", new, {"test_accuracy": 0.9, "cem": {"hxz_relative": -900.0}}, 0.01)

    # Execute
    report = write_report(tmp_path)

    # Assert: one pair, averaged, and no attack-setting column
    assert [r["label"] for r in report["rows"]] == ["bottleneck", "bottleneck+CEM"]
    assert len(report["averages"]) == 1
    assert "attack.unsplit-tv" not in (tmp_path / "report" / "report.md").read_text()


def test_of_an_attacks_repeats_the_report_keeps_the_one_the_attackers_own_validation_favours() -> None:
    # Prepare: three repeats of one GAN attack; repeat 1 diverged (at the mean image) and its
    # validation says so; repeat 2 has the lowest target MSE but not the lowest validation MSE, so
    # choosing by the targets would be looking at what the attacker cannot see
    def repeat(seed: int, mse: float, val_mse: float) -> dict[str, Any]:
        metrics = {"mse": mse, "psnr": 20.0, "ssim": 0.5, "mse_mean_guess": 0.06}
        return {"attack": "gan", "mode": "train", "victim": "v", "attack_seed": seed, "metrics": metrics, "fit": {"val_mse": val_mse}, "time_s": 2.0}

    results = {"kind": "centralized", "attacks": [repeat(0, 0.030, 0.031), repeat(1, 0.070, 0.069), repeat(2, 0.028, 0.033)]}
    # Execute
    values = run_values(results)
    # Assert: repeat 0's figures, three repeats, all three timed; repeat 1's failure does not fail the row
    assert values["gan_train_mse"] == 0.030 and values["gan_train_repeats"] == 3.0
    assert values["attack_s"] == 6.0 and "gan_train_failed" not in values
    row = build_table([RunRecord("cell", "centralized", "done", {"defense.name": "bottleneck", "cem.lambda": 16.0, "run.seed": 0}, values)]).rows[0]
    assert _failed_or("gan_train_mse", row) == "0.0300 (best of 3)"


def test_an_attack_run_again_with_the_same_seed_replaces_its_result_and_one_without_validation_keeps_repeat_0() -> None:
    # Prepare: decoder repeat 0 run twice (the second stands); an UnSplit pair of repeats, which
    # records no validation measure, so the attacker cannot choose between them
    def entry(attack: str, seed: int, mse: float, fit: dict[str, float]) -> dict[str, Any]:
        metrics = {"mse": mse, "psnr": 20.0, "ssim": 0.5, "mse_mean_guess": 0.06}
        return {"attack": attack, "mode": "train", "victim": "v", "attack_seed": seed, "metrics": metrics, "fit": fit, "time_s": 1.0}

    results = {"attacks": [entry("decoder", 0, 0.020, {"val_mse": 0.02}), entry("decoder", 0, 0.010, {"val_mse": 0.03}),
                           entry("unsplit", 1, 0.030, {"tv": 0.1}), entry("unsplit", 0, 0.040, {"tv": 0.1})]}
    # Execute
    chosen = latest_attacks(results)
    # Assert
    assert chosen[("decoder", "train", "v")]["metrics"]["mse"] == 0.010 and chosen[("decoder", "train", "v")]["repeats"] == 1
    assert chosen[("unsplit", "train", "v")]["attack_seed"] == 0 and chosen[("unsplit", "train", "v")]["repeats"] == 2


def test_a_fig5_panel_without_an_image_says_why() -> None:
    archived_before_grids = RunRecord(name="a", execution="centralized", status="done", values={"decoder_train_mse": 0.01})
    attacked = RunRecord(name="b", execution="centralized", status="done", values={"decoder_train_mse": 0.01}, grids={"decoder_train": Path("x.png")})
    assert missing_panel_note(archived_before_grids, "decoder_train") == "image not archived"
    assert missing_panel_note(attacked, "cem_stats_train") == "not attacked"
    assert missing_panel_note(None, "decoder_train") == "no such cell"


def test_a_hijacking_servers_last_round_is_the_reports_fsha_column() -> None:
    # Prepare: two rounds of a federated run under FSHA; the last one counts
    def round_(mse: float, failed: bool) -> dict[str, Any]:
        return {"round": 1, "hijack": {"inversion_mse": mse, "mean_image_mse": 0.07, "mse_to_mean_image": mse / 0.07, "failed": failed}}

    hijacked = {"kind": "federated", "final": {"test_accuracy_mean": 0.5}, "rounds": [round_(0.07, True), round_(0.02, False)]}
    resisted = {"kind": "federated", "final": {"test_accuracy_mean": 0.5}, "rounds": [round_(0.02, False), round_(0.075, True)]}
    honest = {"kind": "federated", "final": {"test_accuracy_mean": 0.5}, "rounds": [{"round": 1, "hijack": {}}]}
    # Execute
    values = run_values(hijacked)
    # Assert
    assert values["fsha_train_mse"] == 0.02 and values["fsha_train_mean_image"] == 0.07
    assert "fsha_train_mse" not in run_values(resisted) and run_values(resisted)["fsha_train_failed"] == 1.0
    assert not any(key.startswith("fsha") for key in run_values(honest))
    table = build_table([RunRecord("cell", "federated", "done", {"defense.name": "bottleneck", "cem.lambda": 0.0, "run.seed": 0}, values)])
    assert "fsha_train_mse" in table.columns and _failed_or("fsha_train_mse", table.rows[0]) == "0.0200"

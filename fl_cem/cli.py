"""``fl-cem``: the command line for centralized training, attacks and inspection.

Federated runs start with ``flwr run .`` (see README); every subcommand here takes the same
run-config TOML files and ``--set section.key=value`` overrides.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from fl_cem.config import Config, parse_override


def _load(args: argparse.Namespace) -> Config:
    overrides = dict(parse_override(item) for item in args.set)
    return Config.load(args.config, overrides)


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="run-config TOML (same files as flwr run --run-config)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one key, e.g. cem.lambda=16")


def cmd_train(args: argparse.Namespace) -> int:
    from fl_cem.training.centralized import train_centralized

    cfg = _load(args).for_kind("centralized")
    results = train_centralized(cfg)
    final = results["final"]
    print(
        f"done: test accuracy {final['test_accuracy']:.4f} "
        f"(at best val epoch {final['best_val_epoch']}: {final['test_accuracy_at_best_val']:.4f}); "
        f"results in {cfg.run.output_dir}/{cfg.run.name}/results.json"
    )
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Validate a config and load its data, as every run does before any work starts."""
    from fl_cem.data import load_splits

    cfg = _load(args)
    splits = load_splits(cfg.data, cfg.run.seed)
    print(
        f"ok: {cfg.data.source} data, {len(splits.train)} training / {len(splits.val)} validation / "
        f"{len(splits.test)} test images of shape {tuple(splits.shape)}, {splits.num_classes} classes"
    )
    return 0


def cmd_federated(args: argparse.Namespace) -> int:
    """Check the config and data here, run ``flwr run`` with them, exit non-zero unless the run finished."""
    from fl_cem.federated.launch import run_flwr

    cfg = _load(args)
    cmd_check(args)
    results = run_flwr(cfg, args.clients, args.federation_config)
    if results.get("status") != "finished":
        reason = results.get("reason") or f"it ended with status {results.get('status', 'unrecorded')!r}; see flwr's output above"
        print(f"fl-cem: run failed: {reason}", file=sys.stderr)
        return 1
    final = results["final"]
    print(f"finished: test accuracy {final['test_accuracy_mean']:.4f} (local test {final['local_test_accuracy_mean']:.4f}), {results['clients']} clients")
    return 0


def cmd_stop_superlink(args: argparse.Namespace) -> int:
    """End the local SuperLink of this ``$FLWR_HOME`` (and its helpers) by pid, no one else's."""
    import os
    import signal

    from fl_cem.federated.launch import local_superlink_pids

    pids = local_superlink_pids()
    if not pids:
        print("no local SuperLink of this FLWR_HOME is running")
        return 0
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    print(f"stopped the local SuperLink: pids {', '.join(map(str, pids))}")
    return 0


def cmd_attack(args: argparse.Namespace) -> int:
    from fl_cem.attacks.run import attack_run

    overrides = dict(parse_override(item) for item in args.set)
    for outcome in attack_run(args.run, args.attack, args.mode, args.client, overrides):
        m = outcome["metrics"]
        ratio, ratio_full = outcome["mse_bound_ratio"], outcome["mse_bound_ratio_full"]
        below = [name for name, key in (("isotropic", "bound_violated"), ("full-covariance", "bound_violated_full")) if outcome[key]]
        print(
            f"{outcome['attack']} ({outcome['mode']}, {outcome['victim']}, {outcome['target_source']} targets): "
            f"MSE {m['mse']:.5f} (mean guess {m['mse_mean_guess']:.5f}), PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.3f}"
            + (f", MSE / Thm-1 bound estimate {ratio:.3g} (isotropic H(x))" if ratio is not None else "")
            + (f", {ratio_full:.3g} (full-covariance H(x))" if ratio_full is not None else "")
            + (f" -- BELOW the {' and '.join(below)} Thm-1 estimate{'s' * (len(below) > 1)}: the H(x) estimate is too high" if below else "")
            + (" -- FAILED: no better than the mean image" if outcome["failed"] else "")
        )
    print(f"appended to {args.run}/results.json")
    return 0


def cmd_defaults(args: argparse.Namespace) -> int:
    """Print every key with its default and its doc line, as the [tool.flwr.app.config] tables of pyproject.toml."""
    import json

    from fl_cem.config import field_docs

    docs = field_docs()
    section = None
    for key, value in Config.defaults_flat().items():
        head, name = key.split(".", 1)
        if head != section:
            print(f"\n[tool.flwr.app.config.{head}]")
            section = head
        print(f"{name} = {json.dumps(value)}" + (f"  # {docs[key]}" if key in docs else ""))
    return 0


def cmd_defenses(args: argparse.Namespace) -> int:
    from fl_cem.registry import get_defense, list_defenses

    for name in list_defenses():
        doc = (get_defense(name).__doc__ or "").strip().splitlines()[0]
        print(f"{name:14s} {doc}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fl-cem",
        description="Split learning with CEM: centralized training, attacks, sweeps and reports; "
        "federated runs through flwr run (or fl-cem federated). Every command takes the same "
        "run-config TOML files and --set section.key=value overrides.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a split model centrally")
    _add_config_args(train)
    train.set_defaults(func=cmd_train)
    check = sub.add_parser("check", help="validate a config and load its data (seconds), as fl-cem train and flwr run do first")
    _add_config_args(check)
    check.set_defaults(func=cmd_check)
    federated = sub.add_parser("federated", help="check the config, run it with flwr run, exit non-zero unless it finished")
    _add_config_args(federated)
    federated.add_argument("--clients", type=int, default=10, help="simulated supernodes (default 10)")
    federated.add_argument("--federation-config", default="", help='more flwr federation settings, e.g. "client-resources-num-cpus=1"')
    federated.set_defaults(func=cmd_federated)
    stop = sub.add_parser("stop-superlink", help="stop the local SuperLink flwr run started for this FLWR_HOME (by pid)")
    stop.set_defaults(func=cmd_stop_superlink)
    attack = sub.add_parser("attack", help="invert the smashed data of a finished run")
    attack.add_argument("--run", required=True, help="run folder, e.g. runs/federated")
    attack.add_argument("--attack", default="decoder", help="decoder, gan, rmle (white-box), fora or unsplit (black-box), cem_stats (the CEM statistics channel)")
    attack.add_argument("--mode", default="train", choices=["train", "infer"])
    attack.add_argument("--client", type=int, help="federated runs: attack this client only (default: each in turn)")
    attack.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override attack keys, e.g. attack.epochs=5")
    attack.set_defaults(func=cmd_attack)
    defaults = sub.add_parser("defaults", help="print every config key with its default and doc line (pyproject form)")
    defaults.set_defaults(func=cmd_defaults)
    defenses = sub.add_parser("defenses", help="list registered defenses")
    defenses.set_defaults(func=cmd_defenses)
    from fl_cem.experiments.cli import add_subcommands

    add_subcommands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, FileNotFoundError) as err:
        print(f"fl-cem: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""Attack splits never score an image the attacker trained on; ``run_attack`` plumbing."""

import pytest
import torch
import torch.nn.functional as F

from fl_cem.attacks.evaluate import attack_splits, limit_aux, make_attack, run_attack, split_images
from fl_cem.attacks.rmle import RmleAttack
from fl_cem.config import AttackConfig

CPU = torch.device("cpu")


def test_train_mode_holds_out_a_disjoint_share_of_the_training_split() -> None:
    # Execute
    splits = attack_splits("train", n_train=100, n_test=40, seed=0, holdout=0.1)

    # Assert: 10 targets, 90 aux, together exactly the training split
    assert (splits.aux_split, splits.target_split) == ("train", "train")
    assert len(splits.targets) == 10 and len(splits.aux) == 90
    assert set(splits.aux.tolist()).isdisjoint(splits.targets.tolist())
    assert sorted(splits.aux.tolist() + splits.targets.tolist()) == list(range(100))


def test_infer_mode_uses_disjoint_halves_of_the_test_split() -> None:
    # Execute
    splits = attack_splits("infer", n_train=100, n_test=11, seed=0)

    # Assert: 11 test images -> 5 for the attacker, 6 scored
    assert (splits.aux_split, splits.target_split) == ("test", "test")
    assert len(splits.aux) == 5 and len(splits.targets) == 6
    assert set(splits.aux.tolist()).isdisjoint(splits.targets.tolist())
    assert sorted(splits.aux.tolist() + splits.targets.tolist()) == list(range(11))


def test_splits_repeat_with_the_seed_and_change_with_another() -> None:
    # Execute
    first = attack_splits("infer", 0, 50, seed=3)
    again = attack_splits("infer", 0, 50, seed=3)
    other = attack_splits("infer", 0, 50, seed=4)

    # Assert
    assert torch.equal(first.targets, again.targets)
    assert not torch.equal(first.targets, other.targets)


@pytest.mark.parametrize(("mode", "n_train", "n_test", "match"), [("both", 10, 10, "mode"), ("infer", 10, 1, "too few")])
def test_bad_modes_and_tiny_splits_are_rejected(mode: str, n_train: int, n_test: int, match: str) -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match=match):
        attack_splits(mode, n_train, n_test, seed=0)


def test_split_images_indexes_the_named_splits() -> None:
    # Prepare: each image's pixel value is its index, test images offset by 1000
    train = torch.arange(20.0).view(20, 1, 1, 1)
    test = 1000 + torch.arange(10.0).view(10, 1, 1, 1)

    # Execute
    aux, targets = split_images("infer", train, test, seed=0)

    # Assert
    splits = attack_splits("infer", 20, 10, seed=0)
    assert aux.flatten().tolist() == (1000 + splits.aux).tolist()
    assert targets.flatten().tolist() == (1000 + splits.targets).tolist()


def test_run_attack_scores_recorded_smashed_data_like_freshly_smashed_data() -> None:
    # Prepare: a noiseless encoder, so the wire's z equals smashing the targets here
    cfg = AttackConfig(name="decoder", epochs=1, batch_size=16)
    images = torch.rand(48, 1, 8, 8)
    aux, targets = images[:32], images[32:]

    def run(target_z: torch.Tensor | None) -> dict[str, float]:
        attack = make_attack(cfg, lambda x: F.pixel_unshuffle(x, 2), (1, 8, 8), (4, 4, 4), CPU, seed=0)
        return run_attack(attack, aux, targets, target_z=target_z).metrics

    # Execute
    fresh = run(None)
    recorded = run(F.pixel_unshuffle(targets, 2))

    # Assert
    assert recorded == fresh
    assert set(fresh) == {"mse", "psnr", "ssim", "mse_mean_guess", "mse_to_mean_image"}


def test_run_attack_rejects_smashed_data_of_another_length() -> None:
    # Prepare
    attack = make_attack(AttackConfig(epochs=1), lambda x: x, (1, 8, 8), (1, 8, 8), CPU)

    # Execute / Assert
    with pytest.raises(ValueError, match="rows"):
        run_attack(attack, torch.rand(4, 1, 8, 8), torch.rand(3, 1, 8, 8), target_z=torch.rand(2, 1, 8, 8))


def test_run_attack_takes_uint8_images_and_keeps_a_few_pairs_for_grids() -> None:
    # Prepare: rmle with one negligible step returns its start, the aux mean ((255 + 51) / 2 / 255 = 0.6)
    cfg = AttackConfig(name="rmle", rmle_steps=1, rmle_lr=1e-12)
    aux = torch.tensor([255, 51], dtype=torch.uint8).view(2, 1, 1, 1).expand(2, 1, 4, 4)
    targets = torch.full((5, 1, 4, 4), 153, dtype=torch.uint8)
    attack = make_attack(cfg, lambda x: x, (1, 4, 4), (1, 4, 4), CPU)

    # Execute
    result = run_attack(attack, aux, targets, keep=3)

    # Assert: targets are 0.6, reconstructions the aux mean 0.6
    assert isinstance(attack, RmleAttack)
    assert result.originals.shape == result.reconstructions.shape == (3, 1, 4, 4)
    assert torch.allclose(result.originals, torch.full((3, 1, 4, 4), 0.6))
    assert torch.allclose(result.reconstructions, torch.full((3, 1, 4, 4), 0.6), atol=1e-5)
    assert result.grid(n=3).shape == (3, 2 * 6 + 2, 3 * 6 + 2)


def test_aux_limit_keeps_a_seeded_sample_of_the_attackers_images() -> None:
    # Prepare
    aux = torch.arange(100.0).reshape(100, 1, 1, 1)
    # Execute
    first, again, other = limit_aux(aux, 30, seed=1), limit_aux(aux, 30, seed=1), limit_aux(aux, 30, seed=2)
    # Assert: 30 distinct images of the 100, the same for the same seed; no limit keeps all
    assert len(first) == 30 and len(set(first.flatten().tolist())) == 30
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert torch.equal(limit_aux(aux, 0, seed=1), aux) and torch.equal(limit_aux(aux, 500, seed=1), aux)

"""L_C of Eq. 5-7 against hand computations, the official variant, and gradients."""

from __future__ import annotations

import math

import pytest
import torch

from fl_cem.cem import ConditionalEntropy
from fl_cem.cem.paper import paper_batch
from fl_cem.cem.stats import assign
from fl_cem.config import CEMConfig

MODES = ("full", "diag", "isotropic")


def make_cem(
    mode: str, *, variant: str = "paper", k: int = 1, classes: int = 2, n: int = 10, sigma: float = 0.5
) -> ConditionalEntropy:
    cfg = CEMConfig(lam=16.0, clusters_per_class=k, covariance=mode, variant=variant)
    return ConditionalEntropy(cfg, sigma, classes, n)


def load(
    cem: ConditionalEntropy,
    centres: list[list[float]],
    weights: list[float],
    cov: torch.Tensor,
    epoch_var: list[float] | None = None,
) -> None:
    k = len(weights)
    cem.load_state_dict(
        {
            "centres": torch.tensor(centres),
            "weights": torch.tensor(weights),
            "cov": cov.float(),
            "counts": torch.ones(k, dtype=torch.long),
            "epoch_var": torch.tensor(epoch_var if epoch_var is not None else [0.0] * k),
        }
    )


# Two classes, one cluster each, d = 2, N = 10, sigma = 0.5. Cluster 0 holds the whole batch
# z = (1, 0), (-1, 0): n_0 = 2, so Eq. 5 gives pi = (0.5 * 8 + 2) / 10 = 0.6 and 0.4, and
# Eq. 6 mixes in dSigma_0 = diag(1, 0) with share n_0 / (pi_0 N) = 1/3.
CENTRES = [[0.0, 0.0], [10.0, 10.0]]
BATCH = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
LABELS = torch.tensor([0, 0])
STORED = {
    "full": torch.tensor([[[2.0, 1.0], [1.0, 2.0]], [[3.0, 0.0], [0.0, 3.0]]]),
    "diag": torch.tensor([[2.0, 2.0], [3.0, 3.0]]),
    "isotropic": torch.tensor([2.0, 3.0]),
}
# |Sigma_0' + I/4| / |I/4| for each mode:
#   full: Sigma_0' = 2/3 [[2,1],[1,2]] + 1/3 diag(1,0) = [[5/3,2/3],[2/3,4/3]] -> (23/12 * 19/12 - 4/9) * 16 = 373/9
#   diag: Sigma_0' = (5/3, 4/3)                                                -> 23/12 * 19/12 * 16 = 437/9
#   iso:  s_0' = 2/3 * 2 + 1/3 * (1 + 0)/2 = 3/2                                -> ((3/2 + 1/4) * 4)^2 = 49
# Cluster 1 keeps Sigma_1 = 3 I: (13/4 * 4)^2 = 169.
RATIO_0 = {"full": 373 / 9, "diag": 437 / 9, "isotropic": 49.0}


@pytest.mark.parametrize("mode", MODES)
def test_loss_matches_eq7_closed_form_on_hand_built_mixture(mode: str) -> None:
    # Prepare
    cem = make_cem(mode)
    load(cem, CENTRES, [0.5, 0.5], STORED[mode])
    expected = 0.6 * (-math.log(0.6) + 0.5 * math.log(RATIO_0[mode])) + 0.4 * (-math.log(0.4) + 0.5 * math.log(169.0))

    # Execute
    loss = cem.loss(BATCH, LABELS)

    # Assert
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert cem.weights.tolist() == pytest.approx([0.6, 0.4])


@pytest.mark.parametrize("mode", MODES)
def test_loss_stores_eq5_and_eq6_running_statistics(mode: str) -> None:
    # Prepare
    cem = make_cem(mode)
    load(cem, CENTRES, [0.5, 0.5], STORED[mode])
    expected_cov_0 = {
        "full": [[5 / 3, 2 / 3], [2 / 3, 4 / 3]],
        "diag": [5 / 3, 4 / 3],
        "isotropic": 1.5,
    }[mode]

    # Execute
    cem.loss(BATCH, LABELS)

    # Assert
    assert torch.allclose(cem.cov[0], torch.tensor(expected_cov_0), atol=1e-6)
    assert torch.equal(cem.cov[1], STORED[mode][1])


def test_loss_without_update_leaves_state_untouched() -> None:
    # Prepare
    cem = make_cem("diag")
    load(cem, CENTRES, [0.5, 0.5], STORED["diag"])
    before = cem.state_dict()

    # Execute
    first = cem.loss(BATCH, LABELS, update=False)
    second = cem.loss(BATCH, LABELS, update=False)

    # Assert
    assert first.item() == second.item()
    for key, value in cem.state_dict().items():
        assert torch.equal(value, before[key])


def test_modes_agree_on_isotropic_statistics() -> None:
    # Prepare: Sigma = 2 I stored in each mode; the batch's dSigma_0 = diag(1/2, 1/2) is isotropic too.
    batch = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    labels = torch.zeros(4, dtype=torch.long)
    stored = {
        "full": 2.0 * torch.eye(2).expand(2, 2, 2),
        "diag": torch.full((2, 2), 2.0),
        "isotropic": torch.full((2,), 2.0),
    }
    losses = {}

    # Execute
    for mode in MODES:
        cem = make_cem(mode)
        load(cem, CENTRES, [0.5, 0.5], stored[mode])
        losses[mode] = cem.loss(batch, labels).item()

    # Assert: pi = (0.5*6 + 4)/10 = 0.7, share 4/7, s_0' = 3/7 * 2 + 4/7 * 1/2 = 8/7.
    expected = 0.7 * (-math.log(0.7) + math.log(1 + (8 / 7) / 0.25)) + 0.3 * (-math.log(0.3) + math.log(1 + 2.0 / 0.25))
    for mode in MODES:
        assert losses[mode] == pytest.approx(expected, rel=1e-6)


def test_modes_agree_on_sampled_isotropic_gaussians() -> None:
    # Prepare: well-separated isotropic clusters with many samples per dimension.
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(2).repeat_interleave(2000)
    z = 0.3 * torch.randn(4000, 3, generator=g) + 5.0 * labels[:, None].float()
    losses = {}

    # Execute
    for mode in MODES:
        cem = make_cem(mode, n=4000, sigma=0.1)
        cem.refit(z, labels, torch.Generator().manual_seed(1))
        losses[mode] = cem.report()["lc"]

    # Assert: equal up to the sampling anisotropy (a few per mille), and ordered full <= diag <= iso.
    assert losses["full"] == pytest.approx(losses["isotropic"], rel=5e-3)
    assert losses["full"] <= losses["diag"] <= losses["isotropic"]


@pytest.mark.parametrize("mode", MODES)
def test_whole_dataset_as_one_batch_reproduces_full_data_statistics(mode: str) -> None:
    # Prepare: 2 classes x 2 well-separated clusters, N = 40.
    g = torch.Generator().manual_seed(0)
    offsets = torch.tensor([[0.0, 0.0, 0.0], [8.0, 0.0, 0.0], [0.0, 8.0, 0.0], [0.0, 0.0, 8.0]])
    cluster = torch.arange(4).repeat_interleave(10)
    z = offsets[cluster] + torch.randn(40, 3, generator=g)
    labels = cluster // 2
    cem = make_cem(mode, k=2, n=40)
    cem.refit(z, labels, torch.Generator().manual_seed(0))
    fitted = cem.state_dict()
    cem.load_state_dict({**fitted, "weights": torch.tensor([0.1, 0.4, 0.3, 0.2]), "cov": 0 * fitted["cov"]})

    # Execute
    cem.loss(z, labels)

    # Assert: Eq. 5 with N_batch = N gives n_j / N, Eq. 6 with share 1 gives the cluster covariance.
    assert torch.allclose(cem.weights, torch.full((4,), 0.25))
    assert torch.allclose(cem.cov, fitted["cov"], atol=1e-5)
    members = z[cluster == 0]
    centred = members - members.mean(0)
    full_0 = centred.T @ centred / len(members)
    expected_0 = {"full": full_0, "diag": torch.diagonal(full_0), "isotropic": torch.trace(full_0) / 3}[mode]
    row = int(torch.cdist(members.mean(0, keepdim=True), cem.centres).argmin())
    assert torch.allclose(cem.cov[row], expected_0, atol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_gradcheck_through_lc_in_float64(mode: str) -> None:
    # Prepare
    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 3, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    centres = torch.tensor([[0.0, 0, 0], [3, 3, 3], [-3, 0, 3], [0, 3, -3]], dtype=torch.float64)
    index = assign(z, labels, centres, 2)
    weights = torch.tensor([0.3, 0.2, 0.4, 0.1], dtype=torch.float64)
    a = torch.randn(4, 3, 3, generator=g, dtype=torch.float64)
    full = a @ a.transpose(1, 2) + 0.1 * torch.eye(3, dtype=torch.float64)
    diagonal = torch.diagonal(full, dim1=1, dim2=2)
    cov = {"full": full, "diag": diagonal, "isotropic": diagonal.mean(1)}[mode]
    log_det = torch.zeros(4, dtype=torch.float64)

    def loss(features: torch.Tensor) -> torch.Tensor:
        return paper_batch(features, index, centres, weights, cov, log_det, 20, 0.7, mode).loss

    # Execute / Assert
    assert torch.autograd.gradcheck(loss, (z.requires_grad_(True),))


def test_gradient_reaches_features_only() -> None:
    # Prepare
    cem = make_cem("full")
    load(cem, CENTRES, [0.5, 0.5], STORED["full"])
    z = BATCH.clone().requires_grad_(True)

    # Execute
    cem.loss(z, LABELS).backward()

    # Assert
    assert z.grad is not None and bool(torch.isfinite(z.grad).all()) and z.grad.abs().sum() > 0
    assert not any(t.requires_grad for t in cem.state_dict().values())


def test_encoder_receives_lc_gradient() -> None:
    # Prepare
    from fl_cem.config import ModelConfig
    from fl_cem.models.split import build_split_model

    torch.manual_seed(0)
    model = build_split_model(ModelConfig(arch="vgg11", cut=1, bottleneck=2), (3, 8, 8), 2, (0.5,) * 3, (0.25,) * 3)
    x, labels = torch.rand(8, 3, 8, 8), torch.tensor([0, 1] * 4)
    cem = make_cem("diag", k=2, n=8, sigma=0.1)
    with torch.no_grad():
        cem.refit(model.encoder(x), labels, torch.Generator().manual_seed(0))

    # Execute
    z_hat = model.encoder(x)
    cem.loss(z_hat, labels).backward()

    # Assert
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())


# ---------------------------------------------------------------- official variant
def test_official_loss_matches_hand_computation() -> None:
    # Prepare: 2 classes x 2 clusters; within-class weights (0.6, 0.4 | 0.5, 0.5);
    # N = 400 -> mean class size 200; sigma = 0.2 -> threshold 0.125 * 0.04 = 0.005.
    cem = make_cem("isotropic", variant="official", k=2, n=400, sigma=0.2)
    centres = [[0.0, 0.0], [5.0, 5.0], [10.0, 0.0], [0.0, 10.0]]
    load(cem, centres, [0.3, 0.2, 0.25, 0.25], torch.zeros(4), epoch_var=[0.5, 1.0, 2.0, 0.1])
    z = torch.tensor([[1.0, 1.0], [0.0, 2.0], [10.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    # Cluster 0: v_hat = mean((1+1)/2, (0+4)/2) = 1.5, blend 10*2/(0.6*200) = 1/6 -> v = 1.5/6 + 5/6*0.5 = 2/3.
    # Cluster 2: v_hat = (0+1)/2 = 0.5, blend 10*1/(0.5*200) = 0.1 -> v = 0.05 + 0.9*2 = 1.85.
    hinge_0 = math.log(2 / 3 + 0.01) - math.log(0.005 + 0.01)
    hinge_2 = math.log(1.85 + 0.01) - math.log(0.005 + 0.01)
    expected = (0.6 * hinge_0 + 0.5 * hinge_2) / 2

    # Execute
    loss = cem.loss(z, labels)

    # Assert
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_official_loss_caps_blend_and_hinges_at_threshold() -> None:
    # Prepare: N = 40 -> class size 20; cluster 0 gets blend 10*2/(0.6*20) >= 1 -> 0.99;
    # cluster 2 sits exactly on its centre with a tiny epoch variance -> below the threshold.
    cem = make_cem("isotropic", variant="official", k=2, n=40, sigma=0.2)
    centres = [[0.0, 0.0], [5.0, 5.0], [10.0, 0.0], [0.0, 10.0]]
    load(cem, centres, [0.3, 0.2, 0.25, 0.25], torch.zeros(4), epoch_var=[0.5, 1.0, 1e-4, 0.1])
    z = torch.tensor([[1.0, 1.0], [0.0, 2.0], [10.0, 0.0]])
    labels = torch.tensor([0, 0, 1])
    expected = 0.6 * (math.log(0.99 * 1.5 + 0.01 * 0.5 + 0.01) - math.log(0.015)) / 2

    # Execute
    loss = cem.loss(z, labels)

    # Assert
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_official_loss_keeps_fitted_state() -> None:
    # Prepare
    cem = make_cem("diag", variant="official")
    load(cem, CENTRES, [0.5, 0.5], STORED["diag"], epoch_var=[2.0, 3.0])
    before = cem.state_dict()

    # Execute
    cem.loss(BATCH, LABELS)

    # Assert
    for key, value in cem.state_dict().items():
        assert torch.equal(value, before[key])


@pytest.mark.parametrize(
    ("variant", "lr", "expected"),
    [
        ("paper", 0.05, 16.0),
        ("paper", 1e-5, 16.0),
        ("official", 0.05, 16.0 * 0.001 / 0.05),  # 0.32
        ("official", 0.00041, 16.0 * 0.001 / 0.00041),  # 39.02: at the switch, still scaled
        ("official", 0.0004, 16.0),  # below the switch: unscaled
    ],
)
def test_effective_lambda(variant: str, lr: float, expected: float) -> None:
    # Prepare
    cem = make_cem("diag", variant=variant)

    # Execute
    value = cem.effective_lambda(lr)

    # Assert
    assert value == pytest.approx(expected)

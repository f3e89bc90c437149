"""Shapes and sizes of the inversion networks, and the GAN and rMLE loss pieces."""

import pytest
import torch

from fl_cem.attacks.gan import gradient_penalty
from fl_cem.attacks.networks import critic, decoding_network, feature_critic, upsampling_steps
from fl_cem.attacks.rmle import total_variation


@pytest.mark.parametrize(("input_size", "smashed_size", "steps"), [(32, 8, 2), (8, 4, 1), (8, 8, 0)])
def test_upsampling_steps_is_log2_of_the_size_ratio(input_size: int, smashed_size: int, steps: int) -> None:
    # Execute
    got = upsampling_steps(input_size, smashed_size)

    # Assert
    assert got == steps


@pytest.mark.parametrize(("input_size", "smashed_size"), [(32, 12), (4, 8)])
def test_upsampling_steps_rejects_sizes_not_a_power_of_two_apart(input_size: int, smashed_size: int) -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match="powers of two"):
        upsampling_steps(input_size, smashed_size)


@pytest.mark.parametrize(
    ("smashed_shape", "input_shape"), [((8, 8, 8), (3, 32, 32)), ((4, 4, 4), (1, 8, 8)), ((1, 8, 8), (1, 8, 8))]
)
def test_decoding_network_maps_smashed_data_to_images_in_unit_range(
    smashed_shape: tuple[int, int, int], input_shape: tuple[int, int, int]
) -> None:
    # Prepare
    net = decoding_network(smashed_shape, input_shape)
    z = torch.randn(2, *smashed_shape) * 10

    # Execute
    x = net(z)

    # Assert
    assert x.shape == (2, *input_shape)
    assert x.min() >= 0 and x.max() <= 1


def test_decoding_network_parameter_count_at_paper_cifar_shapes() -> None:
    # Prepare: 8x8x8 smashed -> 3x32x32 (VGG11 cut 2, 8-channel bottleneck). By hand:
    # first conv 8*64*9 + 64 = 4672, its BN 128; 8 residual blocks of 2 * (64*64*9) + 2 * 128 = 73984;
    # 2 up blocks of 64*64*9 + 64 + 128 = 37056; final conv 64*3*9 + 3 = 1731.
    expected = 4672 + 128 + 8 * 73984 + 2 * 37056 + 1731
    net = decoding_network((8, 8, 8), (3, 32, 32))

    # Execute
    count = sum(p.numel() for p in net.parameters())

    # Assert
    assert count == expected == 672_515


@pytest.mark.parametrize("input_shape", [(3, 32, 32), (1, 8, 8), (3, 16, 8)])
def test_critic_scores_each_image_once(input_shape: tuple[int, int, int]) -> None:
    # Prepare
    net = critic(input_shape)

    # Execute
    scores = net(torch.rand(3, *input_shape))

    # Assert
    assert scores.shape == (3,)


@pytest.mark.parametrize(("weight_norm", "penalty"), [(1.0, 0.0), (2.0, 1.0), (0.5, 0.25)])
def test_gradient_penalty_of_a_linear_critic_is_squared_norm_excess(weight_norm: float, penalty: float) -> None:
    # Prepare: critic(x) = <w, x> has gradient w everywhere, so the penalty is (||w|| - 1)^2
    linear = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 1, bias=False), torch.nn.Flatten(0))
    with torch.no_grad():
        linear[1].weight.copy_(torch.tensor([[weight_norm, 0.0, 0.0, 0.0]]))
    real, fake = torch.rand(5, 1, 2, 2), torch.rand(5, 1, 2, 2)

    # Execute
    got = gradient_penalty(linear, real, fake)

    # Assert
    assert got.item() == pytest.approx(penalty)


def test_total_variation_averages_vertical_and_horizontal_differences_per_image() -> None:
    # Prepare: columns 0 and 1 -> horizontal differences all 1, vertical all 0; a flat image has none
    stripes = torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]])
    flat = torch.full((1, 1, 2, 2), 0.3)

    # Execute
    tv = total_variation(torch.cat([stripes, flat]))

    # Assert
    assert tv.tolist() == [1.0, 0.0]


def test_every_named_inversion_network_maps_smashed_data_to_images() -> None:
    # Prepare
    import torch

    from fl_cem.attacks.networks import INVERSION_NETWORKS
    from fl_cem.config import ATTACK_NETWORKS

    # Assert: the config's list is the registry's, and each network has the image's shape in [0, 1]
    assert tuple(INVERSION_NETWORKS) == ATTACK_NETWORKS
    for build in INVERSION_NETWORKS.values():
        out = build((8, 8, 8), (3, 32, 32))(torch.rand(2, 8, 8, 8))
        assert out.shape == (2, 3, 32, 32) and 0 <= out.min() and out.max() <= 1


@pytest.mark.parametrize("smashed_shape", [(8, 8, 8), (4, 2, 2), (16, 1, 1), (8, 16, 16)])
def test_feature_critic_scores_each_smashed_sample_once(smashed_shape: tuple[int, int, int]) -> None:
    # Prepare: maps from 1x1 (deep cuts on small images) to 16x16
    score = feature_critic(smashed_shape)

    # Execute
    out = score(torch.randn(3, *smashed_shape))

    # Assert
    assert out.shape == (3,)

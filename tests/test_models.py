"""Split models: shapes at each cut, parameter and MAC counts worked out by hand."""

from __future__ import annotations

import pytest
import torch

from fl_cem.config import ModelConfig
from fl_cem.models.split import build_split_model, complexity

CIFAR = (3, 32, 32)
STATS = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def conv(cin: int, cout: int) -> int:
    """Parameters of a 3x3 conv with bias plus its batch norm (weight and bias)."""
    return cin * cout * 9 + cout + 2 * cout


@pytest.mark.parametrize(
    ("cut", "bottleneck", "smashed"),
    [(1, 8, (8, 16, 16)), (2, 8, (8, 8, 8)), (3, 8, (8, 8, 8)), (2, 0, (128, 8, 8)), (3, 0, (256, 8, 8))],
)
def test_vgg11_smashed_shape_per_cut(cut: int, bottleneck: int, smashed: tuple[int, int, int]) -> None:
    # Execute
    model = build_split_model(ModelConfig(cut=cut, bottleneck=bottleneck), CIFAR, 10, *STATS)
    logits = model.decoder(model.encoder(torch.rand(2, *CIFAR)))
    # Assert
    assert model.smashed_shape == smashed
    assert logits.shape == (2, 10)


def test_vgg11_c2_bottleneck_parameter_counts_match_paper_table9() -> None:
    # Prepare: encoder = conv64, conv128, bottleneck conv 128->8 (paper: 0.085M)
    expected_encoder = conv(3, 64) + conv(64, 128) + conv(128, 8)
    # decoder = conv 8->128, convs 256, 256, 512, 512, 512, 512 and a 512->10 head
    expected_decoder = (
        conv(8, 128) + conv(128, 256) + conv(256, 256) + conv(256, 512) + 3 * conv(512, 512) + 512 * 10 + 10
    )
    # Execute
    model = build_split_model(ModelConfig(cut=2, bottleneck=8), CIFAR, 10, *STATS)
    enc = complexity(model.encoder, CIFAR)
    dec = complexity(model.decoder, model.smashed_shape)
    # Assert
    assert enc.params == expected_encoder == 85_272
    assert dec.params == expected_decoder == 9_164_682
    # MACs: 64*32*32*27 + 128*16*16*576 + 8*8*8*1152 (paper: 21.9M)
    assert enc.macs == 64 * 32 * 32 * 27 + 128 * 16 * 16 * 576 + 8 * 8 * 8 * 1152 == 21_233_664


def test_a_narrower_decoder_leaves_the_encoder_and_the_wire_unchanged() -> None:
    # Execute
    full = build_split_model(ModelConfig(cut=2, bottleneck=8), CIFAR, 10, *STATS)
    half = build_split_model(ModelConfig(cut=2, bottleneck=8, decoder_width=0.5), CIFAR, 10, *STATS)
    # Assert: the same encoder and smashed shape; the decoder's convs at half width
    assert half.smashed_shape == full.smashed_shape
    assert [p.shape for p in half.encoder.parameters()] == [p.shape for p in full.encoder.parameters()]
    expected = conv(8, 128) + conv(128, 128) + conv(128, 128) + conv(128, 256) + 3 * conv(256, 256) + 256 * 10 + 10
    assert complexity(half.decoder, half.smashed_shape).params == expected
    with pytest.raises(ValueError, match="decoder-width"):
        ModelConfig(arch="resnet20", decoder_width=0.5)


def test_vgg11_adapts_to_tiny_grayscale_images() -> None:
    # Execute: 8x8 digits lose the pools that would go below 1x1
    model = build_split_model(ModelConfig(cut=2), (1, 8, 8), 10, (0.5,), (0.25,))
    logits = model.decoder(model.encoder(torch.rand(4, 1, 8, 8)))
    # Assert
    assert model.smashed_shape == (8, 2, 2)
    assert logits.shape == (4, 10)


@pytest.mark.parametrize(("cut", "smashed"), [(1, (8, 32, 32)), (4, (8, 16, 16))])
def test_resnet20_split_shapes(cut: int, smashed: tuple[int, int, int]) -> None:
    # Execute
    model = build_split_model(ModelConfig(arch="resnet20", cut=cut), CIFAR, 100, *STATS)
    logits = model.decoder(model.encoder(torch.rand(2, *CIFAR)))
    # Assert
    assert model.smashed_shape == smashed
    assert logits.shape == (2, 100)


def test_resnet20_paper_split_has_four_convs_on_the_client() -> None:
    # Execute
    model = build_split_model(ModelConfig(arch="resnet20", cut=1, bottleneck=8), CIFAR, 10, *STATS)
    convs = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    # Assert: stem + two convs of the first block + bottleneck
    assert len(convs) == 4


def test_sigmoid_bounds_the_smashed_data() -> None:
    model = build_split_model(ModelConfig(sigmoid=True), CIFAR, 10, *STATS)
    with torch.no_grad():
        z = model.encoder(torch.randn(3, *CIFAR) * 10)
    assert float(z.min()) >= 0 and float(z.max()) <= 1


@pytest.mark.parametrize("arch", ["vgg11", "resnet20"])
def test_group_norm_encoder_normalises_each_image_on_its_own(arch: str) -> None:
    # Prepare: the same seed with batch and with group norm in the encoder
    torch.manual_seed(0)
    batch = build_split_model(ModelConfig(arch=arch, cut=2), CIFAR, 10, *STATS)
    torch.manual_seed(0)
    group = build_split_model(ModelConfig(arch=arch, cut=2, encoder_norm="group"), CIFAR, 10, *STATS)
    x = torch.rand(4, *CIFAR)
    # Execute: an image smashed alone and inside a batch, in training mode
    alone, together = group.encoder.train()(x[:1]), group.encoder(x)[:1]
    # Assert: no batch norm left in the encoder, none removed from the decoder; the decoder
    # initialised alike; an image's smashed data no longer depends on its batch
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in group.encoder.modules())
    assert any(isinstance(m, torch.nn.GroupNorm) for m in group.encoder.modules())
    assert all(torch.equal(a, b) for a, b in zip(batch.decoder.state_dict().values(), group.decoder.state_dict().values()))
    assert group.smashed_shape == batch.smashed_shape
    torch.testing.assert_close(alone, together)
    assert not torch.allclose(batch.encoder.train()(x[:1]), batch.encoder(x)[:1])
    with pytest.raises(ValueError, match="model.encoder-norm"):
        ModelConfig(encoder_norm="layer")

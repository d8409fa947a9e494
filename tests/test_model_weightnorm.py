"""model/conv.py WeightNormConv1d: the weight reused outside autograd follows parameter updates."""

import torch

from model.conv import WeightNormConv1d


def test_cached_weight_follows_in_place_updates_and_matches_fresh():
    torch.manual_seed(0)
    conv = WeightNormConv1d(channels=8, kernel_size=4, groups=2)
    x = torch.randn(1, 8, 20)
    with torch.no_grad():
        first = conv(x)
        conv.weight_v.mul_(2.0).add_(0.1)          # an optimizer step, in place, same storage
        conv.weight_g.add_(0.5)
        second = conv(x)
    fresh = conv(x)                                # grad enabled: always recomputed
    assert not torch.allclose(first, second)
    torch.testing.assert_close(second, fresh.detach())


def test_inference_mode_parameters_work():
    with torch.inference_mode():
        conv = WeightNormConv1d(channels=8, kernel_size=4, groups=2)
        x = torch.randn(1, 8, 20)
        torch.testing.assert_close(conv(x), conv(x))


def test_positional_conv_rows_equal_the_full_output():
    """A stream computes the positional conv only for its query rows; they must equal the
    same rows of the full output (zero padding still at the edges of the input), for even
    and odd kernels and for first rows inside and beyond the padding."""
    from model.conv import PositionalConvEmbedding

    torch.manual_seed(0)
    for kernel in (8, 7):
        pos = PositionalConvEmbedding(hidden_size=8, kernel_size=kernel, groups=2, activation="gelu")
        hidden = torch.randn(2, 23, 8)
        with torch.inference_mode():
            full = pos(hidden)
            for first in (0, 1, kernel // 2, kernel, 22, 23):
                torch.testing.assert_close(pos(hidden, first), full[:, first:], atol=1e-6, rtol=1e-6)
    import pytest

    with pytest.raises(ValueError, match="first_row"):
        pos(hidden, 24)

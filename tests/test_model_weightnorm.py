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

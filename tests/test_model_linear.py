"""model/linear.py: oneDNN's product at inference, nn.Linear's everywhere else, same parameters."""

import pytest
import torch

from model.linear import (_PACK_AVAILABLE, Linear, _onednn_bf16_available, _use_onednn, onednn_linear,
                          prepacked_weights, to_plain_linear)

needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")
needs_packing = pytest.mark.skipif(not _PACK_AVAILABLE, reason="this torch cannot pack weights for oneDNN")


def _pair(in_features=48, out_features=96, bias=True):
    torch.manual_seed(0)
    ours = Linear(in_features, out_features, bias=bias)
    plain = torch.nn.Linear(in_features, out_features, bias=bias)
    plain.load_state_dict(ours.state_dict())
    return ours, plain


def test_same_parameters_and_state_dict_as_nn_linear():
    ours, plain = _pair()
    assert isinstance(ours, torch.nn.Linear)
    assert list(ours.state_dict()) == list(plain.state_dict()) == ["weight", "bias"]


@needs_onednn
@pytest.mark.parametrize("shape", [(48, 48), (2, 48, 48), (1, 3, 7, 48), (3, 0, 48)])
@pytest.mark.parametrize("bias", [True, False])
def test_inference_takes_onednn_and_matches_nn_linear(shape, bias):
    ours, plain = _pair(bias=bias)
    x = torch.randn(shape)
    with torch.inference_mode():
        if x.numel():
            assert _use_onednn(x, ours.weight)
        torch.testing.assert_close(ours(x), plain(x), rtol=1e-5, atol=1e-5)
    with torch.no_grad():                      # parameters still require grad, but no graph is built
        assert _use_onednn(x, ours.weight) == bool(x.numel())
        torch.testing.assert_close(ours(x), plain(x), rtol=1e-5, atol=1e-5)


@needs_onednn
def test_bfloat16_inference_takes_onednn_where_the_cpu_has_it():
    ours, plain = _pair()
    ours.to(torch.bfloat16), plain.to(torch.bfloat16)
    x = torch.randn(5, 48, dtype=torch.bfloat16)
    with torch.inference_mode():
        assert _use_onednn(x, ours.weight) == _onednn_bf16_available()
        assert not _use_onednn(x.float(), ours.weight)          # dtype mismatch: F.linear raises its own error
        torch.testing.assert_close(ours(x).float(), plain(x).float(), rtol=2e-2, atol=2e-2)


def test_bfloat16_without_onednn_support_falls_back_to_f_linear(monkeypatch):
    # An AVX2-only CPU: oneDNN has no bfloat16 inner product there and raises if asked.
    import model.linear as linear_module

    monkeypatch.setattr(linear_module, "_ONEDNN_DTYPES", (torch.float32,))
    ours, plain = _pair()
    ours.to(torch.bfloat16), plain.to(torch.bfloat16)
    x = torch.randn(2, 5, 48, dtype=torch.bfloat16)
    with torch.inference_mode():
        assert not _use_onednn(x, ours.weight)
        assert _use_onednn(x.float(), ours.weight.float()) == linear_module._AVAILABLE
        torch.testing.assert_close(ours(x), plain(x), rtol=0, atol=0)


def test_training_uses_f_linear_and_its_gradients():
    ours, plain = _pair()
    x = torch.randn(4, 48)
    assert not _use_onednn(x, ours.weight)
    y = ours(x)
    torch.testing.assert_close(y, plain(x), rtol=0, atol=0)
    y.square().sum().backward()
    plain(x).square().sum().backward()
    torch.testing.assert_close(ours.weight.grad, plain.weight.grad)
    torch.testing.assert_close(ours.bias.grad, plain.bias.grad)


def test_switched_off_onednn_falls_back_exactly():
    ours, plain = _pair()
    x = torch.randn(4, 48)
    with torch.inference_mode(), torch.backends.mkldnn.flags(enabled=False):
        assert not _use_onednn(x, ours.weight)
        torch.testing.assert_close(ours(x), plain(x), rtol=0, atol=0)


def test_the_benchmarks_switch_turns_it_off_for_a_block_only():
    ours, plain = _pair()
    x = torch.randn(4, 48)
    with torch.inference_mode():
        with onednn_linear(False):
            assert not _use_onednn(x, ours.weight)
            torch.testing.assert_close(ours(x), plain(x), rtol=0, atol=0)
        assert _use_onednn(x, ours.weight) == torch.backends.mkldnn.is_available()


def _unpacked(x, layer):
    """The product on the plain weight, as before packing."""
    with prepacked_weights(False):
        return layer(x)


@needs_packing
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 48), (2, 48), (48, 48), (2, 48, 48), (1, 1, 48), (3, 0, 48)])
def test_packed_weight_gives_the_plain_weights_product_bit_for_bit(shape, dtype):
    if dtype is torch.bfloat16 and not _onednn_bf16_available():
        pytest.skip("no oneDNN bfloat16 product on this CPU")
    ours, _ = _pair()
    ours.to(dtype)
    x = torch.randn(shape).to(dtype)
    with torch.inference_mode():
        got = ours(x)
        rows = x.numel() // x.shape[-1]
        # One row takes the plain weight: the packed one would use another kernel (~5e-5 apart).
        assert (ours._packed is not None) == (rows > 1)
        # Bit for bit on the AVX-512 machines measured; another CPU's kernels may round otherwise.
        torch.testing.assert_close(got, _unpacked(x, ours), rtol=1e-5, atol=1e-5)


@needs_packing
def test_packed_weight_follows_the_weight_when_it_changes():
    ours, plain = _pair()
    x = torch.randn(8, 48)
    with torch.inference_mode():
        ours(x)
    first = ours._packed[2]
    with torch.no_grad():                          # in place: the version counter moves
        ours.weight.mul_(-1.0)
    plain.load_state_dict(ours.state_dict())
    with torch.inference_mode():
        torch.testing.assert_close(ours(x), plain(x), rtol=1e-5, atol=1e-5)
        assert ours._packed[2] is not first
    ours.load_state_dict(torch.nn.Linear(48, 96).state_dict())
    plain.load_state_dict(ours.state_dict())
    ours.to(torch.float64).to(torch.float32)        # new storage, possibly at a freed address
    with torch.inference_mode():
        torch.testing.assert_close(ours(x), plain(x), rtol=1e-5, atol=1e-5)
        with prepacked_weights(False):
            fresh = Linear(48, 96)
            fresh(x)
            assert fresh._packed is None


def test_packed_weight_is_not_copied_pickled_or_saved():
    import copy
    import io
    import pickle

    ours, plain = _pair()
    x = torch.randn(8, 48)
    with torch.inference_mode():
        want = ours(x)
    for clone in (copy.deepcopy(ours), pickle.loads(pickle.dumps(ours))):
        assert clone._packed is None and list(clone.state_dict()) == ["weight", "bias"]
        with torch.inference_mode():
            torch.testing.assert_close(clone(x), want, rtol=0, atol=0)
    buffer = io.BytesIO()
    torch.save(ours.state_dict(), buffer)
    assert list(torch.load(io.BytesIO(buffer.getvalue()))) == ["weight", "bias"]
    assert "_packed" not in vars(to_plain_linear(torch.nn.Sequential(ours))[0])


def test_to_plain_linear_and_int8_quantize_every_transformer_linear(tmp_path):
    from model import load_model
    from stream.pipeline import quantize_int8
    from tests.checkpoints import write_ctc_checkpoint

    model = load_model(write_ctc_checkpoint(tmp_path / "ckpt"))
    ours = [name for name, m in model.named_modules() if type(m) is Linear]
    assert any(".attention.q_proj" in name for name in ours) and any("feed_forward" in name for name in ours)
    quantized = quantize_int8(model)
    dynamic = torch.ao.nn.quantized.dynamic.Linear
    assert all(isinstance(quantized.get_submodule(name), dynamic) for name in ours)
    assert type(model.get_submodule(ours[0])) is Linear          # the original model is left as it was
    plain = to_plain_linear(model)
    assert plain is model and not any(type(m) is Linear for m in model.modules())


def test_without_onednn_is_the_switched_off_model_for_this_thread_only():
    # The finals' pass (another thread in the server) without oneDNN: bit for bit what the
    # process-wide switch gives for the products, the convolutions (grouped, padded) and GELU,
    # and so for the whole model, while a second thread in the same moment keeps oneDNN.
    import threading

    import torch.nn.functional as F

    from model import WavLMConfig, build_model
    from model.conv import conv1d
    from model.linear import linear, onednn_off_in_this_thread, without_onednn

    torch.manual_seed(0)
    x, w, b = torch.randn(2, 32, 300), torch.randn(32, 8, 16), torch.randn(32)
    rows, weight = torch.randn(48, 64), torch.randn(96, 64)
    config = WavLMConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                         conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
                         feat_extract_norm="group", vocab_size=8, architectures=("WavLMForCTC",))
    model = build_model(config).eval()
    audio = torch.randn(1, 16000)
    with torch.inference_mode():
        with torch.backends.mkldnn.flags(enabled=False):
            switched_off = (F.conv1d(x, w, b, padding=8, groups=4), F.conv1d(x, w[:, :1].expand(32, 32, 16)[:, :32], None, 3),
                            linear(rows, weight), model.wavlm(audio).last_hidden_state)
        seen_elsewhere = []
        with without_onednn():
            other = threading.Thread(target=lambda: seen_elsewhere.append(onednn_off_in_this_thread()))
            other.start()
            other.join()
            here = (conv1d(x, w, b, padding=8, groups=4), conv1d(x, w[:, :1].expand(32, 32, 16)[:, :32], None, 3),
                    linear(rows, weight), model.wavlm(audio).last_hidden_state)
        assert seen_elsewhere == [False] and not onednn_off_in_this_thread()
    for got, want in zip(here, switched_off):
        torch.testing.assert_close(got, want, rtol=0, atol=0)

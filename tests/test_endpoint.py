import pytest

from decoders.endpoint import EndpointConfig, forced_cut


def test_defaults_in_frames():
    c = EndpointConfig()
    assert (c.min_silence_frames, c.max_segment_frames) == (25, 750)
    assert EndpointConfig(min_silence_s=0.001, max_segment_s=0.001).min_silence_frames == 1
    assert EndpointConfig(min_silence_s=0.001, max_segment_s=0.001).max_segment_frames == 2


@pytest.mark.parametrize("kw", [{"min_silence_s": 0}, {"max_segment_s": -1}, {"min_silence_s": float("nan")}])
def test_invalid_config(kw):
    with pytest.raises(ValueError):
        EndpointConfig(**kw)


def test_forced_cut_prefers_delimiter_then_blank_then_now():
    assert forced_cut(now=50, speech_start=10, last_delimiter=30, last_blank=45) == 31
    assert forced_cut(now=50, speech_start=10, last_delimiter=None, last_blank=45) == 46
    assert forced_cut(now=50, speech_start=10, last_delimiter=None, last_blank=None) == 51
    # candidates at or before the first speech frame would leave an empty segment
    assert forced_cut(now=50, speech_start=10, last_delimiter=10, last_blank=5) == 51

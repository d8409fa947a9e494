"""The streaming engine: audio intake, incremental encoder, windows, pipeline, sources, server.

    from stream import Pipeline
    pipe = Pipeline.from_pretrained()          # bundled default model
    s = pipe.new_stream()
    events = s.feed(samples, sample_rate) + s.finish()
"""

from decoders.events import ErrorEvent, Event, Final, Partial, SpeakerChange, Word
from stream.pipeline import DEFAULT_MODEL, Pipeline, Stream, StreamConfig

__all__ = ["DEFAULT_MODEL", "ErrorEvent", "Event", "Final", "Partial", "Pipeline", "SpeakerChange",
           "Stream", "StreamConfig", "Word"]

"""Decoders: CTC (greedy incremental, beam search), endpointing, events.

Speaker tracking lives in ``decoders.speaker``. Importing this package does not import
pyctcdecode (the beam finaliser loads it when built).
"""

from .beam import BeamFinaliser
from .ctc import FRAME_S, Vocabulary, greedy_decode
from .endpoint import EndpointConfig
from .events import ErrorEvent, Event, Final, Partial, SpeakerChange, Word, event_from_dict, event_from_json
from .transcriber import SegmentTranscriber, coalesce_partials

__all__ = [
    "BeamFinaliser",
    "EndpointConfig",
    "ErrorEvent",
    "Event",
    "FRAME_S",
    "Final",
    "Partial",
    "SegmentTranscriber",
    "SpeakerChange",
    "Vocabulary",
    "Word",
    "coalesce_partials",
    "event_from_dict",
    "event_from_json",
    "greedy_decode",
]

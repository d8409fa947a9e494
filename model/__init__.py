"""WavLM in plain PyTorch: backbone, heads, losses, SpecAugment masking and checkpoint loading."""

from .attention import KeyValue, WavLMAttention
from .config import WavLMConfig
from .encoder import Encoder, EncoderLayer
from .heads import (WavLMForAudioFrameClassification, WavLMForCTC, WavLMForCTCWithSpeaker,
                    WavLMForSequenceClassification, WavLMForXVector)
from .loading import DEFAULT_MODEL_DIR, CheckpointError, build_model, load_model, save_model
from .outputs import ModelOutput
from .wavlm import WavLMModel

__all__ = [
    "DEFAULT_MODEL_DIR", "CheckpointError", "Encoder", "EncoderLayer", "KeyValue", "ModelOutput", "WavLMAttention", "WavLMConfig",
    "WavLMForAudioFrameClassification", "WavLMForCTC", "WavLMForCTCWithSpeaker", "WavLMForSequenceClassification",
    "WavLMForXVector", "WavLMModel", "build_model", "load_model", "save_model",
]

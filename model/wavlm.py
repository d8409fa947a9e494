"""The WavLM backbone: conv feature encoder -> feature projection -> transformer encoder (-> adapter)."""

from __future__ import annotations

import torch
import torch.nn as nn

from .adapter import Adapter
from .config import WavLMConfig
from .conv import FeatureEncoder, FeatureProjection, conv_output_lengths
from .encoder import Encoder
from .masking import compute_mask_indices
from .outputs import ModelOutput


def lengths_to_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B,) int -> (B, max_len) bool, True on the first lengths[b] positions."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


class WavLMModel(nn.Module):
    """WavLM backbone; submodule names match transformers' so checkpoint keys map 1:1."""

    def __init__(self, config: WavLMConfig):
        super().__init__()
        self.config = config
        self.feature_extractor = FeatureEncoder(config)
        self.feature_projection = FeatureProjection(config.conv_dim[-1], config.hidden_size, config.layer_norm_eps,
                                                    config.feat_proj_dropout)
        # the learned "masked frame" vector exists only when the config asks for SpecAugment (as in transformers)
        if config.mask_time_prob > 0 or config.mask_feature_prob > 0:
            self.masked_spec_embed = nn.Parameter(torch.empty(config.hidden_size).uniform_())
        else:
            self.masked_spec_embed = None
        self.encoder = Encoder(config)
        self.adapter = Adapter(config) if config.add_adapter else None

    # ---- lengths and masks ----------------------------------------------------------
    def feat_extract_output_lengths(self, lengths: torch.Tensor, add_adapter: bool | None = None) -> torch.Tensor:
        """Sample counts (B,) -> frame counts (B,) after the conv encoder (and the adapter, by default if present)."""
        lengths = conv_output_lengths(lengths, self.config.conv_kernel, self.config.conv_stride)
        add_adapter = self.adapter is not None if add_adapter is None else add_adapter
        if add_adapter and self.adapter is not None:
            lengths = self.adapter.output_lengths(lengths)
        return lengths

    def check_input(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
        """Raise ValueError for input the model cannot process (wrong rank/dtype, too short)."""
        if not isinstance(input_values, torch.Tensor):
            raise TypeError(f"input_values must be a torch.Tensor (B, N), got {type(input_values).__name__}")
        if input_values.dim() != 2:
            raise ValueError(
                f"input_values must have shape (batch, samples), got rank {input_values.dim()} "
                f"shape {tuple(input_values.shape)}" + (" (use x[None] for a single clip)" if input_values.dim() == 1 else "")
            )
        if not input_values.is_floating_point():
            raise ValueError(f"input_values must be floating point, got {input_values.dtype}")
        need = self.config.receptive_field
        if input_values.shape[1] < need:
            raise ValueError(
                f"audio too short: {input_values.shape[1]} samples, the conv encoder needs at least {need} "
                f"({need / 16000 * 1000:.0f} ms at 16 kHz) for one frame"
            )
        if attention_mask is not None:
            if attention_mask.shape != input_values.shape:
                raise ValueError(
                    f"attention_mask shape {tuple(attention_mask.shape)} does not match input_values "
                    f"{tuple(input_values.shape)}"
                )
            shortest = int(attention_mask.sum(-1).min())
            if shortest < need:
                raise ValueError(
                    f"audio too short: a batch item has {shortest} valid samples, the conv encoder needs at least {need}"
                )

    def frame_mask(self, attention_mask: torch.Tensor, num_frames: int, add_adapter: bool = False) -> torch.Tensor:
        """Sample-level attention_mask (B, N) (1 = valid, right-padded) -> frame mask (B, num_frames) bool."""
        lengths = self.feat_extract_output_lengths(attention_mask.sum(-1).long(), add_adapter=add_adapter)
        return lengths_to_mask(lengths, num_frames)

    # ---- SpecAugment ------------------------------------------------------------------
    def draw_time_mask(self, shape: tuple[int, int], frame_mask: torch.Tensor | None = None,
                       device: torch.device | None = None) -> torch.Tensor | None:
        """SpecAugment time spans from the config's probabilities: (B, T) bool, or None when it masks no time.

        Drawn from numpy's global generator, as transformers does. Training code that must know which
        frames were masked draws them here and passes them to forward as mask_time_indices.
        """
        cfg = self.config
        if not cfg.apply_spec_augment or cfg.mask_time_prob <= 0:
            return None
        return torch.from_numpy(compute_mask_indices(
            shape, cfg.mask_time_prob, cfg.mask_time_length, attention_mask=frame_mask,
            min_masks=cfg.mask_time_min_masks,
        )).to(device)

    def apply_spec_augment(self, hidden: torch.Tensor, frame_mask: torch.Tensor | None = None,
                           mask_time_indices: torch.Tensor | None = None) -> torch.Tensor:
        """Replace masked time steps by masked_spec_embed and zero masked feature channels.

        hidden: (B, T, H). Given mask_time_indices (B, T) bool are always applied; otherwise masks are drawn
        from the config probabilities, only in training mode. Returns a new tensor.
        """
        cfg = self.config
        if not cfg.apply_spec_augment:
            return hidden
        B, T, H = hidden.shape
        if mask_time_indices is None and self.training:
            mask_time_indices = self.draw_time_mask((B, T), frame_mask, hidden.device)
        if mask_time_indices is not None:
            if self.masked_spec_embed is None:
                raise ValueError("mask_time_indices given but the config has mask_time_prob == mask_feature_prob == 0, "
                                 "so the model has no masked_spec_embed")
            hidden = torch.where(mask_time_indices.bool()[..., None], self.masked_spec_embed.to(hidden.dtype), hidden)
        if cfg.mask_feature_prob > 0 and self.training:
            feature_mask = torch.from_numpy(compute_mask_indices(
                (B, H), cfg.mask_feature_prob, cfg.mask_feature_length, min_masks=cfg.mask_feature_min_masks,
            )).to(hidden.device)
            hidden = hidden.masked_fill(feature_mask[:, None, :], 0.0)
        return hidden

    def freeze_feature_encoder(self) -> None:
        """Stop gradients into the conv feature encoder (fine-tuning keeps it fixed)."""
        for p in self.feature_extractor.parameters():
            p.requires_grad = False

    # ---- forward ------------------------------------------------------------------
    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None,
                output_hidden_states: bool = False, mask_time_indices: torch.Tensor | None = None) -> ModelOutput:
        """input_values: (B, N) float 16 kHz audio; attention_mask: (B, N) 1/True = valid sample (right-padded).

        Returns ModelOutput with last_hidden_state (B, T, H') and frame_mask (B, T) when attention_mask is given.
        """
        self.check_input(input_values, attention_mask)
        features = self.feature_extractor(input_values).transpose(1, 2)  # (B, T, C)
        T = features.shape[1]
        frame_mask = None if attention_mask is None else self.frame_mask(attention_mask, T)
        hidden = self.feature_projection(features)
        hidden = self.apply_spec_augment(hidden, frame_mask, mask_time_indices)
        # The encoder may run in another precision than the front end (stream.pipeline.bf16_transformer).
        hidden = hidden.to(self.encoder.layer_norm.weight.dtype)
        hidden, states = self.encoder(hidden, frame_mask, output_hidden_states)
        if self.adapter is not None:
            hidden = self.adapter(hidden)
            if attention_mask is not None:
                frame_mask = self.frame_mask(attention_mask, hidden.shape[1], add_adapter=True)
        return ModelOutput(last_hidden_state=hidden, hidden_states=states, frame_mask=frame_mask)

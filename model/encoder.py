"""Transformer encoder: post-LN ("base") and pre-LN ("stable", "large") in one pair of classes."""

from __future__ import annotations

import torch
import torch.nn as nn

from .activations import get_activation
from .attention import KeyValue, WavLMAttention
from .config import WavLMConfig
from .conv import PositionalConvEmbedding
from .linear import Linear


class FeedForward(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, activation: str,
                 activation_dropout: float = 0.0, hidden_dropout: float = 0.0):
        super().__init__()
        self.intermediate_dense = Linear(hidden_size, intermediate_size)
        self.activation = get_activation(activation)
        self.intermediate_dropout = nn.Dropout(activation_dropout)
        self.output_dense = Linear(intermediate_size, hidden_size)
        self.output_dropout = nn.Dropout(hidden_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, H) -> (B, T, H)."""
        x = self.intermediate_dropout(self.activation(self.intermediate_dense(x)))
        return self.output_dropout(self.output_dense(x))


class EncoderLayer(nn.Module):
    """Attention + feed-forward block.

    stable_layer_norm=False (post-LN): y = LN(x + Attn(x)); out = LN'(y + FF(y)).
    stable_layer_norm=True  (pre-LN):  y = x + Attn(LN(x)); out = y + FF(LN'(y)).
    """

    def __init__(self, config: WavLMConfig, has_relative_position_bias: bool):
        super().__init__()
        self.stable_layer_norm = config.do_stable_layer_norm
        self.attention = WavLMAttention(
            config.hidden_size, config.num_attention_heads, config.num_buckets, config.max_bucket_distance,
            has_relative_position_bias, dropout=config.attention_dropout,
        )
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.feed_forward = FeedForward(config.hidden_size, config.intermediate_size, config.hidden_act,
                                        config.activation_dropout, config.hidden_dropout)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, position_bias: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
                past: KeyValue | None = None, rows: slice | None = None) -> tuple[torch.Tensor, KeyValue]:
        """x: (B, Tq, H); position_bias: ungated (heads, Tq, Tk) or (B*heads, Tq, Tk);
        key_padding_mask: (B, Tk) bool, True = padding, or (B, Tq, Tk), True = not visible to that query;
        past: earlier keys/values (Tk = past + Tq); rows: compute the output of only these of the Tq
        positions (every position still gives its key and value).
        Returns (y (B, Tq, H), or (B, len(rows), H) with rows, KeyValue of all Tk positions).
        """
        residual = x if rows is None else x[:, rows]
        if self.stable_layer_norm:
            attn, kv = self.attention(self.layer_norm(x), position_bias, key_padding_mask, past, rows)
            x = residual + self.dropout(attn)
            return x + self.feed_forward(self.final_layer_norm(x)), kv
        attn, kv = self.attention(x, position_bias, key_padding_mask, past, rows)
        x = self.layer_norm(residual + self.dropout(attn))
        return self.final_layer_norm(x + self.feed_forward(x)), kv


def streaming_attention_blocked(frames: int, left: int, chunk: int, right: int,
                                device: torch.device | str = "cpu") -> torch.Tensor:
    """(frames, frames) bool, True where a query may not see a key in a streaming window.

    A query in chunk k (frames [k * chunk, (k + 1) * chunk)) sees keys from ``left`` frames
    before its chunk to ``right`` frames after it, as stream.window's windows give it.
    """
    pos = torch.arange(frames, device=device)
    chunk_start = (pos // chunk * chunk)[:, None]
    return (pos[None, :] < chunk_start - left) | (pos[None, :] >= chunk_start + chunk + right)


class Encoder(nn.Module):
    """Positional convolution, then the layers; `layer_norm` placement depends on `stable_layer_norm`.

    post-LN: layer_norm after adding the positional embedding, before layer 0.
    pre-LN:  layer_norm after the last layer.

    ``attention_window`` (left, chunk, right) in frames, None by default, limits every query
    to the keys its streaming window would give it (``streaming_attention_blocked``): for
    streaming-aware training and for measuring that part of the stream's drift offline. The
    stream computes a right-context frame's keys inside the earlier window, so this is close
    to the stream, not equal to it.
    """

    def __init__(self, config: WavLMConfig):
        super().__init__()
        self.stable_layer_norm = config.do_stable_layer_norm
        self.layerdrop = config.layerdrop
        self.pos_conv_embed = PositionalConvEmbedding(
            config.hidden_size, config.num_conv_pos_embeddings, config.num_conv_pos_embedding_groups,
            config.feat_extract_activation,
        )
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.layers = nn.ModuleList(EncoderLayer(config, i == 0) for i in range(config.num_hidden_layers))
        self.attention_window: tuple[int, int, int] | None = None

    def embed(self, hidden: torch.Tensor, first_row: int = 0) -> torch.Tensor:
        """Add positional embeddings (and post-LN's input layer_norm) to rows [first_row, T):
        (B, T, H) -> input of layer 0 for those rows (B, T - first_row, H). The rows before
        first_row only serve as the positional conv's context."""
        hidden = hidden[:, first_row:] + self.pos_conv_embed(hidden, first_row)
        if not self.stable_layer_norm:
            hidden = self.layer_norm(hidden)
        return self.dropout(hidden)

    def forward(self, hidden: torch.Tensor, frame_mask: torch.Tensor | None = None,
                output_hidden_states: bool = False) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """hidden: (B, T, H) projected features; frame_mask: (B, T) bool, True = valid frame.

        Returns (last (B, T, H), hidden_states | None): hidden_states are the input of layer 0 and each
        layer's output, num_hidden_layers + 1 tensors, all before the pre-LN variant's final layer_norm
        (as transformers 5 returns them).
        """
        if frame_mask is not None:
            hidden = hidden.masked_fill(~frame_mask[..., None], 0.0)  # padding must not leak through the pos conv
        hidden = self.embed(hidden)
        T = hidden.shape[1]
        position_bias = self.layers[0].attention.compute_bias(T, T)  # shared by all layers, each gates it
        key_padding_mask = None if frame_mask is None else ~frame_mask
        if self.attention_window is not None:
            blocked = streaming_attention_blocked(T, *self.attention_window, device=hidden.device)[None]
            key_padding_mask = blocked if key_padding_mask is None else blocked | key_padding_mask[:, None, :]
        states = [hidden] if output_hidden_states else None
        for i, layer in enumerate(self.layers):
            # LayerDrop (never layer 0); a dropped layer repeats its input in hidden_states so
            # weighted layer sums always see num_hidden_layers + 1 entries
            if not (self.training and i > 0 and self.layerdrop > 0 and torch.rand([]).item() < self.layerdrop):
                hidden, _ = layer(hidden, position_bias, key_padding_mask)
            if states is not None:
                states.append(hidden)
        if self.stable_layer_norm:
            hidden = self.layer_norm(hidden)
        return hidden, (tuple(states) if states is not None else None)

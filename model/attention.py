"""Multi-head self-attention with WavLM's gated relative-position bias."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .linear import Linear


@dataclass(frozen=True)
class KeyValue:
    """Keys and values one attention layer used: past ones concatenated with the new ones."""

    key: torch.Tensor  # (B, heads, Tk, head_dim)
    value: torch.Tensor  # (B, heads, Tk, head_dim)


def relative_position_bucket(relative_position: torch.Tensor, num_buckets: int, max_distance: int) -> torch.Tensor:
    """Bucket index of each (key - query) distance: exact for small distances, log-spaced up to max_distance.

    Half the buckets are for keys after the query, half for keys before it.
    """
    num_buckets = num_buckets // 2
    buckets = (relative_position > 0).to(torch.long) * num_buckets
    distance = relative_position.abs()
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    # log(0) for distance 0 gives -inf, which is replaced by the exact branch below
    large = torch.log(distance.float() / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    large = (max_exact + large).to(torch.long).clamp(max=num_buckets - 1)
    return buckets + torch.where(is_small, distance, large)


class WavLMAttention(nn.Module):
    """Self-attention whose relative-position bias is scaled per head and query by a learned gate.

    Only the first layer owns the bias table (``rel_attn_embed``); the encoder computes the ungated
    bias there once and passes it to every layer, each of which gates it with its own query states.
    """

    def __init__(self, hidden_size: int, num_heads: int, num_buckets: int, max_distance: int,
                 has_relative_position_bias: bool, dropout: float = 0.0):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.dropout = dropout
        self.q_proj = Linear(hidden_size, hidden_size)
        self.k_proj = Linear(hidden_size, hidden_size)
        self.v_proj = Linear(hidden_size, hidden_size)
        self.out_proj = Linear(hidden_size, hidden_size)
        self.gru_rel_pos_const = nn.Parameter(torch.ones(1, num_heads, 1, 1))
        self.gru_rel_pos_linear = nn.Linear(self.head_dim, 8)
        self.rel_attn_embed = nn.Embedding(num_buckets, num_heads) if has_relative_position_bias else None

    def compute_bias(self, query_len: int, key_len: int) -> torch.Tensor:
        """Ungated bias (heads, query_len, key_len); the queries are the LAST query_len of the key_len positions.

        It depends only on key - query distances, so any window's bias is a block of a larger one.
        """
        if self.rel_attn_embed is None:
            raise RuntimeError("compute_bias: only the first encoder layer holds the relative-position table")
        if query_len > key_len:
            raise ValueError(f"compute_bias: query_len {query_len} > key_len {key_len}")
        device = self.rel_attn_embed.weight.device
        query_pos = torch.arange(key_len - query_len, key_len, device=device)[:, None]
        key_pos = torch.arange(key_len, device=device)[None, :]
        buckets = relative_position_bucket(key_pos - query_pos, self.num_buckets, self.max_distance)
        return self.rel_attn_embed(buckets).permute(2, 0, 1)  # (heads, Tq, Tk)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """Per-head, per-query gate of the position bias: x (B, Tq, H) -> (B, heads, Tq, 1), values in (1, 2+c)."""
        B, T, _ = x.shape
        proj = self.gru_rel_pos_linear(x.unflatten(-1, (self.num_heads, self.head_dim)))  # (B, T, nh, 8)
        gate_a, gate_b = torch.sigmoid(proj.view(B, T, self.num_heads, 2, 4).sum(-1)).permute(0, 2, 1, 3).unbind(-1)
        return (gate_a * (gate_b * self.gru_rel_pos_const[..., 0] - 1.0) + 2.0)[..., None]

    def forward(self, x: torch.Tensor, position_bias: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
                past: KeyValue | None = None, rows: slice | None = None) -> tuple[torch.Tensor, KeyValue]:
        """Attend the Tq positions of x to past keys/values (if any) followed by their own.

        x: (B, Tq, H); position_bias: ungated (heads, Tq, Tk) or (B*heads, Tq, Tk), Tk = past length + Tq;
        key_padding_mask: (B, Tk) bool, True = padding, or (B, Tq, Tk) bool, True = this query may not see
        this key; past: KeyValue of the earlier positions; rows: only these of the Tq positions query
        (all of them give keys and values), for a stream's last layer, whose other rows are not kept.
        Returns (output (B, Tq, H), or (B, len(rows), H) with rows, KeyValue with all Tk keys/values).
        """
        B, Tq, H = x.shape
        nh, hd = self.num_heads, self.head_dim
        queries = x if rows is None else x[:, rows]
        q = self.q_proj(queries).view(B, queries.shape[1], nh, hd).transpose(1, 2)  # (B, nh, Tq', hd)
        k = self.k_proj(x).view(B, Tq, nh, hd).transpose(1, 2)
        v = self.v_proj(x).view(B, Tq, nh, hd).transpose(1, 2)
        if past is not None:
            k = torch.cat([past.key, k], dim=2)
            v = torch.cat([past.value, v], dim=2)
        Tk = k.shape[2]
        if position_bias.dim() != 3 or position_bias.shape[-2:] != (Tq, Tk):
            raise ValueError(
                f"position_bias must be (heads, {Tq}, {Tk}) or (B*heads, {Tq}, {Tk}), got {tuple(position_bias.shape)}"
            )
        bias = position_bias.view(-1, nh, Tq, Tk)  # (1 or B, nh, Tq, Tk)
        if rows is not None:
            bias = bias[:, :, rows]
            if key_padding_mask is not None and key_padding_mask.dim() == 3:
                key_padding_mask = key_padding_mask[:, rows]
        gate = self.gate(queries)  # (B, nh, Tq', 1)
        if key_padding_mask is None:
            mask = gate * bias  # (B, nh, Tq, Tk)
        else:
            # one (B, nh, Tq, Tk) allocation: -inf on padded keys + gate * bias
            pad = torch.zeros(key_padding_mask.shape, dtype=bias.dtype, device=bias.device)
            pad = pad.masked_fill(key_padding_mask, float("-inf"))
            pad = pad[:, None, None, :] if pad.dim() == 2 else pad[:, None]
            mask = torch.addcmul(pad, gate, bias)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.dtype),
                                             dropout_p=self.dropout if self.training else 0.0)
        out = out.transpose(1, 2).reshape(B, queries.shape[1], H)
        return self.out_proj(out), KeyValue(k, v)

"""Sliding-window transformer over streamed frames.

The window scheduler cuts the stream of projected frames into windows
``[left | chunk | right]``: when ``chunk`` new frames plus ``right`` lookahead frames
exist, the transformer runs on the window and the outputs of the ``chunk`` frames become
final. At the end of a stream the tail is processed with whatever right context exists,
like offline.

Two modes:

* ``recompute``: each window runs from its inputs (positional conv and every layer over
  all ``left + chunk + right`` frames).
* ``cached``: the left context enters only as the keys and values each layer computed for
  those frames when they were chunk frames, so each frame's projections and feed-forward
  run about once (twice for right-context frames, which are recomputed as chunk frames).

The relative-position bias depends only on the query/key distances, so the bias of a
``(queries, keys)`` shape is computed once and reused for every window and stream
(:class:`BiasCache`); the first windows of a stream are shorter and get their own entry.
All per-stream data lives in :class:`TransformerState`; :class:`WindowRunner` only holds
the model and the shape-keyed bias cache, so one runner serves every stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

#: Duration of one encoder frame: the conv encoder's total stride (320) at 16 kHz.
FRAME_SECONDS = 0.02

MODES = ("cached", "recompute")


@dataclass(frozen=True)
class WindowConfig:
    """Window geometry in frames (20 ms each) and the transformer mode."""

    chunk: int        # frames made final by each window
    left: int         # frames of left context
    right: int        # frames of lookahead (right context)
    mode: str = "cached"

    def __post_init__(self):
        if self.chunk < 1:
            raise ValueError(f"chunk must be at least one frame (20 ms), got {self.chunk} frames")
        if self.left < 0 or self.right < 0:
            raise ValueError(f"left and right context must be >= 0, got left={self.left}, right={self.right}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")

    @classmethod
    def from_ms(cls, chunk_ms: float, left_ms: float, right_ms: float, mode: str = "cached",
                ) -> "WindowConfig":
        """Round milliseconds to whole 20 ms frames."""
        for name, ms in (("chunk_ms", chunk_ms), ("left_ms", left_ms), ("right_ms", right_ms)):
            if not ms >= 0:   # also NaN; a small negative value would otherwise round to 0 frames unnoticed
                raise ValueError(f"{name} must be >= 0, got {ms:g}")
        to_frames = lambda ms: int(round(ms / (FRAME_SECONDS * 1000)))  # noqa: E731
        return cls(to_frames(chunk_ms), to_frames(left_ms), to_frames(right_ms), mode)


@dataclass(frozen=True)
class Window:
    """One transformer run, in absolute frame indices.

    Inputs are frames ``[start, end)``; outputs of ``[emit_start, emit_end)`` become final.
    In cached mode, queries are ``[emit_start, end)`` and the left context
    ``[start, emit_start)`` comes from the key/value cache.
    """

    start: int
    emit_start: int
    emit_end: int
    end: int


@dataclass(frozen=True)
class TransformerState:
    """Per-stream state of the windowed transformer.

    features: projected frames kept for later windows, shape (T_kept, H), starting at
              absolute frame ``features_start``.
    emitted:  frames whose outputs are final.
    cache:    cached mode only: per layer, keys/values of the left context frames
              ``[emitted - cache_len, emitted)``, each (1, heads, cache_len, head_dim).
    """

    features: torch.Tensor
    features_start: int
    emitted: int
    cache: tuple | None = None

    @property
    def total_frames(self) -> int:
        return self.features_start + self.features.shape[0]


@dataclass(frozen=True)
class WindowOutput:
    """Outputs of the chunk frames of one window.

    last_hidden_state: (C, H); hidden_states: tuple of (C, H), num_layers + 1 entries
    (as in the offline model: before the pre-LN variant's final layer norm), or None.
    """

    window: Window
    last_hidden_state: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None


def next_window(config: WindowConfig, state: TransformerState, end_of_stream: bool) -> Window | None:
    """The next window to run, or None until enough frames have arrived.

    Before the end of the stream a window needs ``chunk + right`` new frames; at the end
    the remaining frames run with the right context that exists.
    """
    total, emitted = state.total_frames, state.emitted
    if total - emitted >= config.chunk + config.right:
        emit_end = emitted + config.chunk
        end = emit_end + config.right
    elif end_of_stream and total > emitted:
        emit_end = min(total, emitted + config.chunk)
        end = min(total, emit_end + config.right)
    else:
        return None
    return Window(max(0, emitted - config.left), emitted, emit_end, end)


class BiasCache:
    """Relative-position bias per (queries, keys) shape, computed once and reused.

    The bias of a window only depends on query/key distances, so a W x W window's bias is
    exactly the W x W block of the offline bias; with cached keys the queries are the last
    ``Tq`` of ``Tk`` positions. Shared by all streams (it holds no stream data).
    """

    def __init__(self, attention: nn.Module):
        self.attention = attention
        self._bias: dict[tuple[int, int], torch.Tensor] = {}

    def get(self, query_len: int, key_len: int) -> torch.Tensor:
        """(heads, query_len, key_len) float bias."""
        key = (query_len, key_len)
        bias = self._bias.get(key)
        if bias is None:
            bias = self.attention.compute_bias(query_len, key_len)
            self._bias[key] = bias
        return bias

    def __len__(self) -> int:
        return len(self._bias)


class WindowRunner:
    """Runs the positional conv and the transformer layers of a model over windows.

    ``backbone`` is the model's ``WavLMModel``. Batches of windows with the same shape
    run in one forward.
    """

    def __init__(self, backbone: nn.Module, config: WindowConfig):
        self.config = config
        self.encoder = backbone.encoder
        # The transformer's own dtype (bfloat16 after stream.pipeline.bf16_transformer): frames are
        # cast to it on the way in, outputs back to float32 for the heads on the way out.
        self.dtype = next(self.encoder.parameters()).dtype
        self.bias = BiasCache(self.encoder.layers[0].attention)
        conv = self.encoder.pos_conv_embed.conv
        # Row t of the positional conv reads input frames [t - pad, t + kernel - pad - 1].
        self.pos_conv_reach = conv.padding

    def initial_state(self, hidden_size: int, dtype: torch.dtype = torch.float32,
                      device: torch.device | str = "cpu") -> TransformerState:
        return TransformerState(torch.zeros(0, hidden_size, dtype=dtype, device=device), 0, 0,
                                None)

    def append(self, state: TransformerState, frames: torch.Tensor) -> TransformerState:
        """Add projected frames (T, H) to a stream's state."""
        if frames.shape[0] == 0:
            return state
        features = torch.cat([state.features, frames.to(self.dtype)], dim=0)
        return TransformerState(features, state.features_start, state.emitted, state.cache)

    def shape_key(self, state: TransformerState, window: Window) -> tuple[int, int]:
        """Windows with equal keys can be stacked into one batch."""
        if self.config.mode == "recompute":
            return (window.end - window.start, 0)
        cache_len = 0 if state.cache is None else state.cache[0].key.shape[2]
        return (window.end - window.emit_start, cache_len)

    @torch.inference_mode()
    def run(self, states: list[TransformerState], windows: list[Window],
            need_hidden_states: bool) -> list[tuple[WindowOutput, TransformerState]]:
        """Run windows of equal shape_key as one batch; return outputs and new states."""
        if self.config.mode == "recompute":
            return self._run_recompute(states, windows, need_hidden_states)
        return self._run_cached(states, windows, need_hidden_states)

    def _inputs(self, state: TransformerState, first: int, end: int) -> torch.Tensor:
        return state.features[first - state.features_start: end - state.features_start]

    def _run_recompute(self, states, windows, need_hidden_states):
        x = torch.stack([self._inputs(s, w.start, w.end) for s, w in zip(states, windows)])
        width = x.shape[1]                                              # (B, W, H)
        h = self._embed(x)
        hidden = [h] if need_hidden_states else None
        bias = self.bias.get(width, width)
        emit_rows = [slice(w.emit_start - w.start, w.emit_end - w.start) for w in windows]
        last_rows = emit_rows[0] if len(set((r.start, r.stop) for r in emit_rows)) == 1 else None
        h, hidden, _ = self._layers(h, bias, None, hidden, last_rows)
        if last_rows is not None:
            # The last layer computed only the emitted rows: cut the others' states to them as well.
            if hidden is not None:
                hidden = [t[:, last_rows] for t in hidden[:-1]] + hidden[-1:]
            emit_rows = [slice(0, last_rows.stop - last_rows.start)] * len(windows)
        results = []
        for i, (state, window) in enumerate(zip(states, windows)):
            out = _window_output(window, h[i], hidden, i, emit_rows[i])
            results.append((out, self._advance(state, window, None)))
        return results

    def _run_cached(self, states, windows, need_hidden_states):
        reach = self.pos_conv_reach
        # Positional conv only over the frames the query rows can see.
        pos_inputs = []
        for s, w in zip(states, windows):
            first = max(w.start, w.emit_start - reach)
            pos_inputs.append(self._inputs(s, first, w.end))
        x_pos = torch.stack(pos_inputs)                                 # (B, T_pos, H)
        n_query = windows[0].end - windows[0].emit_start
        h = self._embed(x_pos, x_pos.shape[1] - n_query)                # (B, Tq, H)
        hidden = [h] if need_hidden_states else None
        cache_len = 0 if states[0].cache is None else states[0].cache[0].key.shape[2]
        bias = self.bias.get(n_query, cache_len + n_query)
        pasts = [_stack_kv([s.cache[i] for s in states]) if cache_len else None
                 for i in range(len(self.encoder.layers))]
        # Equal shape keys give equal chunks: min(chunk, n_query) (see next_window).
        chunk_rows = slice(0, windows[0].emit_end - windows[0].emit_start)
        h, hidden, new_kv = self._layers(h, bias, pasts, hidden, chunk_rows)
        results = []
        for b, (state, window) in enumerate(zip(states, windows)):
            out = _window_output(window, h[b], hidden, b, chunk_rows)
            # Keep keys/values of frames that are now final (not right context), last `left`.
            keep_end = cache_len + (window.emit_end - window.emit_start)
            keep_start = max(0, keep_end - self.config.left)
            cache = tuple(_slice_kv(kv, b, keep_start, keep_end) for kv in new_kv)
            results.append((out, self._advance(state, window, cache)))
        return results

    def _layers(self, h: torch.Tensor, bias: torch.Tensor, pasts: list | None, hidden: list | None,
                last_rows: slice | None):
        """Run every layer on h (B, Tq, H); the last one computes only ``last_rows`` (None: all), since
        no later layer reads the others and only those rows are kept: that saves its queries,
        output projection and feed-forward for the rows not kept (the right context; in recompute
        mode the left context too). ``pasts``: each layer's cached keys/values (cached mode) or None.
        Returns (h after the final norm, hidden, every layer's keys/values)."""
        new_kv = []
        last = len(self.encoder.layers) - 1
        for i, layer in enumerate(self.encoder.layers):
            h, kv = layer(h, bias, None, None if pasts is None else pasts[i], last_rows if i == last else None)
            new_kv.append(kv)
            if hidden is not None:
                hidden.append(h)
        h = self._finish(h, hidden)
        return h, hidden, new_kv

    def _embed(self, x: torch.Tensor, first_row: int = 0) -> torch.Tensor:
        """Positional conv (+ the post-LN encoder's input layer norm) of rows [first_row, T):
        (B, T, H) -> (B, T - first_row, H)."""
        return self.encoder.embed(x, first_row)

    def _finish(self, h: torch.Tensor, hidden: list | None) -> torch.Tensor:
        """Pre-LN (stable) encoders end with a layer norm; hidden states stay before it, as offline."""
        return self.encoder.layer_norm(h) if self.encoder.stable_layer_norm else h

    def _advance(self, state: TransformerState, window: Window, cache) -> TransformerState:
        """Mark the chunk final and drop frames no later window will read."""
        emitted = window.emit_end
        keep_from = max(0, emitted - max(self.config.left, self.pos_conv_reach))
        keep_from = max(keep_from, state.features_start)
        features = state.features[keep_from - state.features_start:]
        return TransformerState(features, keep_from, emitted, cache)


def _window_output(window: Window, h: torch.Tensor, hidden: list | None, b: int,
                   rows: slice) -> WindowOutput:
    layers = None if hidden is None else tuple(t[b, rows].float() for t in hidden)
    return WindowOutput(window, h[rows].float(), layers)


def _stack_kv(kvs):
    first = kvs[0]
    if len(kvs) == 1:
        return first
    return type(first)(torch.cat([kv.key for kv in kvs]), torch.cat([kv.value for kv in kvs]))


def _slice_kv(kv, b: int, start: int, end: int):
    # .clone() so the cache does not pin the whole batch's key/value tensors in memory.
    return type(kv)(kv.key[b:b + 1, :, start:end].clone(), kv.value[b:b + 1, :, start:end].clone())

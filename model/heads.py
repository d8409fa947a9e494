"""Task heads on the WavLM backbone; class names are the transformers architectures."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import WavLMConfig
from .losses import AMSoftmaxLoss
from .outputs import ModelOutput
from .wavlm import WavLMModel, lengths_to_mask


def weighted_layer_sum(hidden_states: tuple[torch.Tensor, ...], layer_weights: torch.Tensor) -> torch.Tensor:
    """Softmax(layer_weights)-weighted sum of num_layers + 1 tensors (B, T, H) -> (B, T, H)."""
    if len(hidden_states) != layer_weights.shape[0]:
        raise ValueError(f"got {len(hidden_states)} hidden states for {layer_weights.shape[0]} layer weights")
    w = F.softmax(layer_weights, dim=-1)
    return torch.einsum("l,lbth->bth", w, torch.stack(hidden_states))


def statistics_pooling(x: torch.Tensor, mask: torch.Tensor | None = None, correction: int = 1,
                       min_var: float = 0.0) -> torch.Tensor:
    """Mean and standard deviation over valid frames: x (B, T, C), mask (B, T) bool | None -> (B, 2C).

    correction=1 is the unbiased std (transformers' x-vector); min_var floors the variance (keeps
    gradients finite for one-frame inputs).
    """
    if mask is None:
        mean = x.mean(dim=1)
        var = x.var(dim=1, correction=correction)
    else:
        m = mask[..., None].to(x.dtype)
        n = m.sum(dim=1)  # (B, 1)
        mean = (x * m).sum(dim=1) / n
        var = (((x - mean[:, None]) * m) ** 2).sum(dim=1) / (n - correction)
    if min_var > 0:
        var = var.clamp_min(min_var)
    return torch.cat([mean, var.sqrt()], dim=-1)


class _Head(nn.Module):
    """Shared plumbing: the backbone under `.wavlm`, freezing, optional learned layer weights."""

    def __init__(self, config: WavLMConfig, allow_adapter: bool = True):
        super().__init__()
        if config.add_adapter and not allow_adapter:
            raise ValueError(f"{type(self).__name__} does not support adapters (config.add_adapter=True)")
        self.config = config
        self.wavlm = WavLMModel(config)
        if config.use_weighted_layer_sum:
            n = config.num_hidden_layers + 1
            self.layer_weights = nn.Parameter(torch.ones(n) / n)
        else:
            self.layer_weights = None

    def freeze_feature_encoder(self) -> None:
        """Stop gradients into the conv feature encoder."""
        self.wavlm.freeze_feature_encoder()

    def freeze_base_model(self) -> None:
        """Stop gradients into the whole backbone; only the head trains."""
        for p in self.wavlm.parameters():
            p.requires_grad = False

    def _backbone(self, input_values, attention_mask, output_hidden_states, mask_time_indices=None,
                  need_hidden_states=False) -> tuple[ModelOutput, torch.Tensor]:
        """Run the backbone; return (its output, the features the head reads: weighted sum or last state)."""
        out = self.wavlm(input_values, attention_mask, output_hidden_states or need_hidden_states
                         or self.layer_weights is not None, mask_time_indices)
        if self.layer_weights is not None:
            features = weighted_layer_sum(out.hidden_states, self.layer_weights)
        else:
            features = out.last_hidden_state
        if not output_hidden_states and out.hidden_states is not None:
            out = ModelOutput(last_hidden_state=out.last_hidden_state, frame_mask=out.frame_mask)
        return out, features


class WavLMForCTC(_Head):
    """Per-frame token logits for CTC. `.vocab` is the token list (id order) when loaded from a checkpoint."""

    def __init__(self, config: WavLMConfig):
        super().__init__(config)
        if config.vocab_size is None:
            raise ValueError("WavLMForCTC needs config.vocab_size")
        self.dropout = nn.Dropout(config.final_dropout)
        self.lm_head = nn.Linear(config.output_hidden_size if config.add_adapter else config.hidden_size,
                                 config.vocab_size)
        self.vocab: tuple[str, ...] | None = None

    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None,
                output_hidden_states: bool = False, mask_time_indices: torch.Tensor | None = None) -> ModelOutput:
        """input_values: (B, N) -> ModelOutput with logits (B, T, vocab_size)."""
        out = self.wavlm(input_values, attention_mask, output_hidden_states, mask_time_indices)
        logits = self.lm_head(self.dropout(out.last_hidden_state))
        return ModelOutput(last_hidden_state=out.last_hidden_state, hidden_states=out.hidden_states,
                           logits=logits, frame_mask=out.frame_mask)


class WavLMForSequenceClassification(_Head):
    """Utterance-level labels: projector per frame, mean over valid frames, classifier."""

    def __init__(self, config: WavLMConfig):
        super().__init__(config, allow_adapter=False)
        self.projector = nn.Linear(config.hidden_size, config.classifier_proj_size)
        self.classifier = nn.Linear(config.classifier_proj_size, config.num_labels)

    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None,
                output_hidden_states: bool = False, mask_time_indices: torch.Tensor | None = None) -> ModelOutput:
        """input_values: (B, N) -> ModelOutput with logits (B, num_labels)."""
        out, features = self._backbone(input_values, attention_mask, output_hidden_states, mask_time_indices)
        x = self.projector(features)  # (B, T, P)
        if out.frame_mask is None:
            pooled = x.mean(dim=1)
        else:
            m = out.frame_mask[..., None].to(x.dtype)
            pooled = (x * m).sum(dim=1) / m.sum(dim=1)
        return ModelOutput(last_hidden_state=out.last_hidden_state, hidden_states=out.hidden_states,
                           logits=self.classifier(pooled), frame_mask=out.frame_mask)


class WavLMForAudioFrameClassification(_Head):
    """Per-frame labels (e.g. speaker activity for diarization)."""

    def __init__(self, config: WavLMConfig):
        super().__init__(config, allow_adapter=False)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None,
                output_hidden_states: bool = False, mask_time_indices: torch.Tensor | None = None) -> ModelOutput:
        """input_values: (B, N) -> ModelOutput with logits (B, T, num_labels)."""
        out, features = self._backbone(input_values, attention_mask, output_hidden_states, mask_time_indices)
        return ModelOutput(last_hidden_state=out.last_hidden_state, hidden_states=out.hidden_states,
                           logits=self.classifier(features), frame_mask=out.frame_mask)


class TDNNLayer(nn.Module):
    """Dilated 1-D convolution + ReLU whose kernel is stored as a Linear (in*kernel -> out), as in checkpoints."""

    def __init__(self, in_dim: int, out_dim: int, kernel_size: int, dilation: int):
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.kernel_size = kernel_size
        self.dilation = dilation
        self.kernel = nn.Linear(in_dim * kernel_size, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, in_dim) -> (B, T - dilation * (kernel_size - 1), out_dim)."""
        # Linear weight (out, kernel*in) is laid out kernel-major: view as (out, k, in) -> conv weight (out, in, k)
        weight = self.kernel.weight.view(self.out_dim, self.kernel_size, self.in_dim).transpose(1, 2)
        y = F.conv1d(x.transpose(1, 2), weight, self.kernel.bias, dilation=self.dilation)
        return F.relu(y.transpose(1, 2))

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Frames counted as valid after this layer, as transformers counts them: L - kernel_size + 1.

        This ignores the dilation (the true count is L - dilation * (kernel_size - 1)), so with padding a
        few frames that saw padding enter the statistics; kept for parity with transformers' x-vector.
        """
        return lengths - (self.kernel_size - 1)


class WavLMForXVector(_Head):
    """Speaker embeddings: projector, TDNN layers, statistics pooling, embedding Linear; logits for AM-softmax."""

    def __init__(self, config: WavLMConfig):
        super().__init__(config)
        dims = config.tdnn_dim
        self.projector = nn.Linear(config.hidden_size, dims[0])
        self.tdnn = nn.ModuleList(
            TDNNLayer(dims[i - 1] if i > 0 else dims[0], dims[i], config.tdnn_kernel[i], config.tdnn_dilation[i])
            for i in range(len(dims))
        )
        self.feature_extractor = nn.Linear(dims[-1] * 2, config.xvector_output_dim)
        self.classifier = nn.Linear(config.xvector_output_dim, config.xvector_output_dim)
        self.objective = AMSoftmaxLoss(config.xvector_output_dim, config.num_labels)

    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None,
                output_hidden_states: bool = False, mask_time_indices: torch.Tensor | None = None) -> ModelOutput:
        """input_values: (B, N) -> ModelOutput with embeddings (B, xvector_output_dim) and logits (same shape)."""
        out, features = self._backbone(input_values, attention_mask, output_hidden_states, mask_time_indices)
        x = self.projector(features)
        for layer in self.tdnn:
            x = layer(x)
        mask = None
        if attention_mask is not None:
            # transformers: conv lengths (and adapter, if configured) of the valid samples, minus TDNN context
            lengths = self.wavlm.feat_extract_output_lengths(attention_mask.sum(-1).long())
            for layer in self.tdnn:
                lengths = layer.output_lengths(lengths)
            mask = lengths_to_mask(lengths, x.shape[1])
        embeddings = self.feature_extractor(statistics_pooling(x, mask))
        return ModelOutput(last_hidden_state=out.last_hidden_state, hidden_states=out.hidden_states,
                           logits=self.classifier(embeddings), embeddings=embeddings, frame_mask=out.frame_mask)


class SpeakerHead(nn.Module):
    """Bundled model's speaker branch: weighted layer sum -> Linear + ReLU per frame -> mean/std pooling -> Linear.

    input_norm: layer-normalise (no affine) each hidden state before the sum. Pre-LN hidden
    states have norms in the hundreds, dominated by a component common to all frames; a
    head on the raw sum did not learn at all (AM-softmax loss stayed at chance), so new
    checkpoints set it. It is per frame, so a stream computes it window by window.
    """

    def __init__(self, hidden_size: int, num_hidden_states: int, proj_dim: int, embedding_dim: int,
                 num_speakers: int, scale: float = 30.0, margin: float = 0.4, input_norm: bool = False):
        super().__init__()
        self.input_norm = input_norm
        self.layer_weights = nn.Parameter(torch.ones(num_hidden_states) / num_hidden_states)
        self.proj = nn.Linear(hidden_size, proj_dim)
        self.embedding = nn.Linear(2 * proj_dim, embedding_dim)
        self.objective = AMSoftmaxLoss(embedding_dim, num_speakers, scale, margin)  # training only

    def frame_features(self, hidden_states: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """num_layers + 1 tensors (B, T, H) -> per-frame features (B, T, proj_dim)."""
        if self.input_norm:
            hidden_states = tuple(F.layer_norm(h, h.shape[-1:]) for h in hidden_states)
        return F.relu(self.proj(weighted_layer_sum(hidden_states, self.layer_weights)))

    def pool(self, frame_features: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, P) features, (B, T) bool valid mask -> embeddings (B, E).

        Population std (correction 0, variance floored at 1e-6) so a window of one frame is still defined.
        """
        return self.embedding(statistics_pooling(frame_features, frame_mask, correction=0, min_var=1e-6))


class ChangeDetector(nn.Module):
    """Speaker-change detector on the speaker head's per-frame features (bundled model only).

    Per frame: [log(1 + features) (P), speech flag (1)] -> 1x1 conv + ReLU -> one conv of
    `kernel_size` per dilation, each + ReLU -> 1x1 conv -> change logit. The convolutions
    are "valid" (unpadded), so output frame t depends on input frames
    [t - (receptive_field - 1 - lookahead), t + lookahead] and on nothing else: a stream
    computes exactly the offline values by feeding those frames (``valid``), with frames
    before the stream start (and, at its end, after it) as zero rows, which is how
    ``forward`` pads. A change window several seconds wide on features of 20 ms frames is
    what lets it hear a voice change within a fraction of a second of its look-ahead,
    where comparing 1.5 s window embeddings needs a window after the change.

    config: speaker_head["change_detector"] = {"channels": C, "kernel_size": k,
    "dilations": [d1, ...], "lookahead": frames}.
    """

    def __init__(self, feature_dim: int, channels: int, kernel_size: int, dilations: tuple[int, ...],
                 lookahead: int):
        super().__init__()
        self.receptive_field = 1 + (kernel_size - 1) * sum(dilations)
        if not 0 <= lookahead < self.receptive_field:
            raise ValueError(f"change_detector lookahead must be in [0, {self.receptive_field}), got {lookahead}")
        self.lookahead = lookahead
        self.inp = nn.Conv1d(feature_dim + 1, channels, 1)
        self.convs = nn.ModuleList(nn.Conv1d(channels, channels, kernel_size, dilation=d) for d in dilations)
        self.out = nn.Conv1d(channels, 1, 1)

    @classmethod
    def from_spec(cls, feature_dim: int, spec: dict) -> "ChangeDetector":
        missing = [k for k in ("channels", "kernel_size", "dilations", "lookahead") if k not in spec]
        if missing:
            raise ValueError(f"config.speaker_head.change_detector lacks {missing}")
        return cls(feature_dim, int(spec["channels"]), int(spec["kernel_size"]),
                   tuple(int(d) for d in spec["dilations"]), int(spec["lookahead"]))

    @property
    def history(self) -> int:
        """Input frames before an output frame that it depends on."""
        return self.receptive_field - 1 - self.lookahead

    @staticmethod
    def inputs(frame_features: torch.Tensor, speech: torch.Tensor) -> torch.Tensor:
        """Features (B, T, P) >= 0, speech (B, T) in [0, 1] -> detector input rows (B, T, P + 1)."""
        return torch.cat([torch.log1p(frame_features), speech[..., None].to(frame_features.dtype)], dim=-1)

    def valid(self, rows: torch.Tensor) -> torch.Tensor:
        """Input rows (B, T, P + 1) -> logits (B, T - receptive_field + 1); output j is input frame j + history."""
        h = F.relu(self.inp(rows.transpose(1, 2)))
        for conv in self.convs:
            h = F.relu(conv(h))
        return self.out(h)[:, 0]

    def forward(self, frame_features: torch.Tensor, speech: torch.Tensor) -> torch.Tensor:
        """Features (B, T, P), speech (B, T) -> change logits (B, T), zero rows outside [0, T)."""
        rows = F.pad(self.inputs(frame_features, speech), (0, 0, self.history, self.lookahead))
        return self.valid(rows)


class WavLMForCTCWithSpeaker(WavLMForCTC):
    """Bundled model: one backbone pass gives CTC logits and a speaker embedding.

    config.speaker_head: {"embedding_dim": E, "num_speakers": N, "proj_dim": P, optional "scale", "margin",
    "input_norm", "change_detector" (see ChangeDetector; weights under speaker_head.change_detector.*)}.
    """

    def __init__(self, config: WavLMConfig):
        if config.add_adapter:
            raise ValueError("WavLMForCTCWithSpeaker does not support adapters (config.add_adapter=True)")
        super().__init__(config)
        spec = config.speaker_head
        if not spec:
            raise ValueError("WavLMForCTCWithSpeaker needs config.speaker_head")
        missing = [k for k in ("embedding_dim", "num_speakers", "proj_dim") if k not in spec]
        if missing:
            raise ValueError(f"config.speaker_head lacks {missing}")
        self.speaker_head = SpeakerHead(config.hidden_size, config.num_hidden_layers + 1, int(spec["proj_dim"]),
                                        int(spec["embedding_dim"]), int(spec["num_speakers"]),
                                        float(spec.get("scale", 30.0)), float(spec.get("margin", 0.4)),
                                        bool(spec.get("input_norm", False)))
        if spec.get("change_detector"):
            self.speaker_head.change_detector = ChangeDetector.from_spec(int(spec["proj_dim"]),
                                                                         spec["change_detector"])

    @property
    def change_detector(self) -> ChangeDetector | None:
        return getattr(self.speaker_head, "change_detector", None)

    def speaker_frame_features(self, hidden_states: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """All num_layers + 1 hidden states (B, T, H) -> per-frame speaker features (B, T, P)."""
        return self.speaker_head.frame_features(hidden_states)

    def speaker_pool(self, frame_features: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Per-frame speaker features (B, T, P), valid mask (B, T) | None -> embeddings (B, E)."""
        return self.speaker_head.pool(frame_features, frame_mask)

    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None,
                output_hidden_states: bool = False, mask_time_indices: torch.Tensor | None = None) -> ModelOutput:
        """input_values: (B, N) -> ModelOutput with logits (B, T, V) and embeddings (B, E)."""
        out = self.wavlm(input_values, attention_mask, True, mask_time_indices)
        logits = self.lm_head(self.dropout(out.last_hidden_state))
        embeddings = self.speaker_pool(self.speaker_frame_features(out.hidden_states), out.frame_mask)
        return ModelOutput(last_hidden_state=out.last_hidden_state,
                           hidden_states=out.hidden_states if output_hidden_states else None,
                           logits=logits, embeddings=embeddings, frame_mask=out.frame_mask)

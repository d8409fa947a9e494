"""Grow an exported model by transformer layers on top that start as the identity.

The top-layer recipe (``--frozen-layers 4 --speaker-weight 0``) keeps the speaker side by
training only layers 5-6 and the CTC head, and it reached a plateau (train/README, runs
18-22). ``add_identity_layers`` gives it more capacity without moving anything the speaker
head reads: each new pre-LN layer is a copy of the current top layer with its two output
projections (attention ``out_proj`` and feed-forward ``output_dense``) zeroed, so it adds
nothing to the residual stream and the grown model computes exactly what the export did.
The copies' other weights are trained ones, so their queries and feed-forward read useful
features from the first step; the zeroed projections get gradients at once
(d out = input^T x grad) and the layer opens up as training needs it.

The speaker head's learned weights over the hidden states (``speaker_head.layer_weights``,
L + 1 entries: the input of layer 1, then each layer's output, before the final layer norm)
keep theirs; the new layers' outputs get a weight of e^-30 against the others, so the head
reads what it read before, now and as the new layers train (with the head fixed).
"""

from __future__ import annotations

import torch

from model.config import WavLMConfig

#: Softmax logit, relative to the smallest existing one, for the new layers' hidden states.
_UNUSED_LOGIT_OFFSET = 30.0

_ZEROED = ("attention.out_proj.weight", "attention.out_proj.bias",
           "feed_forward.output_dense.weight", "feed_forward.output_dense.bias")


def add_identity_layers(config: WavLMConfig, state: dict[str, torch.Tensor], count: int,
                        ) -> tuple[WavLMConfig, dict[str, torch.Tensor]]:
    """Config and weights of the model with ``count`` identity layers on top of its L layers.

    config: a pre-LN (``do_stable_layer_norm``) WavLM config; state: its state dict (not changed).
    Returns a new config (``num_hidden_layers`` L + count) and a new state dict.
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    if not config.do_stable_layer_norm:
        # A post-LN layer ends in a layer norm, so no choice of weights makes it the identity.
        raise ValueError("identity layers need a pre-LN (do_stable_layer_norm) model")
    top = config.num_hidden_layers - 1
    prefix = f"wavlm.encoder.layers.{top}."
    top_layer = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not top_layer:
        raise ValueError(f"no weights under {prefix!r}: the state does not match the config")
    grown = dict(state)
    for i in range(top + 1, top + 1 + count):
        for name, value in top_layer.items():
            grown[f"wavlm.encoder.layers.{i}.{name}"] = (torch.zeros_like(value) if name in _ZEROED
                                                         else value.clone())
    weights = state.get("speaker_head.layer_weights")
    if weights is not None:
        unused = torch.full((count,), float(weights.min()) - _UNUSED_LOGIT_OFFSET, dtype=weights.dtype)
        grown["speaker_head.layer_weights"] = torch.cat([weights, unused])
    bigger = WavLMConfig.from_dict({**config.to_dict(), "num_hidden_layers": config.num_hidden_layers + count})
    return bigger, grown

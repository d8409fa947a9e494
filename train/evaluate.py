"""Measure a CTC+speaker checkpoint (default: the bundled model/default).

Prints:
- offline CER/WER (greedy CTC) on held-out voices speaking held-out sentences (test) and on
  training voices speaking held-out sentences (test_seen), with a per-voice breakdown;
- streaming CER/WER through stream.Pipeline (chunked windows, the engine users run) on a
  subset of test;
- speaker-embedding EER between held-out speakers (cosine scores over all clip pairs):
  "speaker" trials count a pitch-shifted copy of a voice as another speaker, "voice"
  trials compare only clips of different source voices against same-speaker clips;
- with --kenlm: offline CER/WER of the beam search on the same held-out clips, without and with
  the language model (the finals' decoder, decoders.beam.BeamFinaliser), and streaming beam
  finals with it;
- CER/WER on the real recordings present on this machine (train/real_speech.py): the Asterisk
  English prompts and the ALSA channel-test voice (Debian packages), and the speech in
  pocketsphinx's source package (``python -m train.real_speech`` fetches it from PyPI).

Usage: python -m train.evaluate [--model model/default] [--max-clips 300] [--stream-clips 40]
                                [--kenlm LM [--lm-weight A] [--word-bonus B]]
"""
from __future__ import annotations

import argparse
import json
import random
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from model import load_model
from train import CACHE
from train.data import Clip, bucket_batches, collate, read_manifest
from train.export import DEFAULT_OUT
from train.metrics import equal_error_rate, error_rates, greedy_decode
from train.real_speech import real_recordings


@torch.no_grad()
def offline_log_probs(model, waves: list[np.ndarray]) -> list[np.ndarray]:
    """CTC log-probabilities (T, V) of each 16 kHz float32 wave, one forward per wave (no padding effects)."""
    return [torch.log_softmax(model(torch.from_numpy(w)[None]).logits[0].float(), -1).numpy() for w in waves]


def greedy_transcripts(log_probs: list[np.ndarray]) -> list[str]:
    """Greedy CTC text of each (T, V) log-prob array."""
    return [greedy_decode(lp.argmax(-1)) for lp in log_probs]


def transcribe_offline(model, waves: list[np.ndarray]) -> list[str]:
    """Greedy CTC of each 16 kHz float32 wave, one forward per wave (no padding effects)."""
    return greedy_transcripts(offline_log_probs(model, waves))


def offline_batches(model, clips: list[Clip]) -> list[tuple[list[Clip], int | None]]:
    """[(clips, padded length or None)] for offline measurement without padding effects.

    Layer-norm front ends: fixed-shape buckets with attention masks (padding changes nothing,
    and on CPU every new input shape costs kernel preparation time). Group-norm front ends
    normalise each channel over the whole input, padding included, so each clip runs alone.
    """
    if model.config.feat_extract_norm == "group":
        return [([c], None) for c in clips]
    return bucket_batches(clips, 48.0, random.Random(0))


@torch.no_grad()
def clip_log_probs(model, clips: list[Clip], device: torch.device | str = "cpu",
                   autocast: bool = False) -> list[np.ndarray]:
    """CTC log-probabilities (T_i, V) float32 of each clip (aligned with the input, padding cut
    off), batched by offline_batches. The model must already be on ``device`` in eval mode;
    ``autocast`` runs it in bf16."""
    device = torch.device(device)
    out: dict[str, np.ndarray] = {}
    for batch, pad in offline_batches(model, clips):
        b = collate(batch, {}, None, pad)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = model(b.audio.to(device), b.attention_mask.to(device)).logits
        log_probs = torch.log_softmax(logits.float(), -1).cpu().numpy()
        frames = model.wavlm.feat_extract_output_lengths(b.lengths).tolist()
        for c, lp, n in zip(batch, log_probs, frames):
            out[c.path] = lp[:n]
    return [out[c.path] for c in clips]


def transcribe_clips(model, clips: list[Clip], device: torch.device | str = "cpu",
                     autocast: bool = False) -> list[str]:
    """Greedy CTC of clips (aligned with the input); see clip_log_probs."""
    return greedy_transcripts(clip_log_probs(model, clips, device, autocast))


@torch.no_grad()
def embed_clips(model, clips: list[Clip]) -> np.ndarray:
    """(N, E) L2-normalised speaker embeddings, batched by offline_batches."""
    index = {c.path: i for i, c in enumerate(clips)}
    emb = np.zeros((len(clips), model.config.speaker_head["embedding_dim"]), dtype=np.float32)
    for batch, pad in offline_batches(model, clips):
        b = collate(batch, {}, None, pad)
        e = model(b.audio, b.attention_mask).embeddings
        e = torch.nn.functional.normalize(e, dim=-1).numpy()
        for c, v in zip(batch, e):
            emb[index[c.path]] = v
    return emb


def speaker_eer(model, clips: list[Clip]) -> dict[str, float]:
    emb = embed_clips(model, clips)
    scores = emb @ emb.T
    iu = np.triu_indices(len(clips), k=1)
    spk = np.array([c.speaker for c in clips])
    voice = np.array([c.voice for c in clips])
    same_spk = (spk[:, None] == spk[None, :])[iu]
    diff_voice = (voice[:, None] != voice[None, :])[iu]
    s = scores[iu]
    keep = same_spk | diff_voice
    return {"eer_speaker": equal_error_rate(s, same_spk), "eer_voice": equal_error_rate(s[keep], same_spk[keep]),
            "trials": int(len(s)), "speakers": int(len(set(spk)))}


def stream_transcripts(model, waves: list[np.ndarray], beam: bool = True,
                       final_pass: bool = True, **lm) -> list[str] | None:
    """Finals of each wave streamed through a stream.Pipeline of `model` (loaded CTC model) at the
    default latency, no speaker tracking (None if stream is not importable). final_pass=False:
    finals decoded from the streamed log-probs (what the partials see) instead of the second pass.
    ``lm``: StreamConfig's kenlm_path, lm_weight and word_bonus for the beam finals."""
    try:
        from stream.pipeline import Pipeline, StreamConfig
    except ImportError:
        return None
    return pipeline_transcripts(Pipeline(model, StreamConfig(beam=beam, final_pass=final_pass, **lm)), waves)


def language_model_finaliser(model, args):
    """The finals' beam search with --kenlm and its weights (decoders.beam.BeamFinaliser); built before the
    measurements start, so a missing or unreadable file or a missing package stops the run at once.
    Raises FileNotFoundError / ImportError / ValueError as BeamFinaliser does."""
    from decoders.beam import BeamFinaliser
    from decoders.ctc import Vocabulary

    return BeamFinaliser(Vocabulary.from_tokens(model.vocab), kenlm_path=args.kenlm, alpha=args.lm_weight,
                         beta=args.word_bonus)


def language_model_rates(model, clips: list[Clip], log_probs: list[np.ndarray], lm_beam, args,
                         stream_clips: int) -> dict:
    """CER/WER of the held-out clips decoded from their offline ``log_probs`` (clip_log_probs)
    greedily and by the beam search without and with the LM finaliser ``lm_beam`` (from
    language_model_finaliser; printed)."""
    from decoders.beam import BeamFinaliser

    refs = [c.text for c in clips]
    t = time.time()
    hyps_greedy = greedy_transcripts(log_probs)
    plain_beam = BeamFinaliser(lm_beam.vocab)
    plain = error_rates(refs, [plain_beam.decode(lp)[0] for lp in log_probs])
    with_lm = error_rates(refs, [lm_beam.decode(lp)[0] for lp in log_probs])
    greedy = error_rates(refs, hyps_greedy)
    out = {"greedy_cer": greedy[0], "greedy_wer": greedy[1], "beam_cer": plain[0], "beam_wer": plain[1],
           "lm_cer": with_lm[0], "lm_wer": with_lm[1], "lm": str(args.kenlm), "lm_weight": args.lm_weight,
           "word_bonus": args.word_bonus, "clips": len(clips)}
    print(f"test offline with the beam search ({len(clips)} clips): greedy CER {greedy[0]:.3f} WER {greedy[1]:.3f}, "
          f"beam CER {plain[0]:.3f} WER {plain[1]:.3f}, beam + LM ({args.kenlm}, weight {args.lm_weight:g}, "
          f"word bonus {args.word_bonus:g}) CER {with_lm[0]:.3f} WER {with_lm[1]:.3f} ({time.time() - t:.0f} s)")
    if stream_clips:
        sc = clips[:stream_clips]
        hyps = stream_transcripts(model, [np.asarray(_load(c.path)) for c in sc], kenlm_path=str(args.kenlm),
                                  lm_weight=args.lm_weight, word_bonus=args.word_bonus)
        if hyps is not None:
            cer, wer = error_rates([c.text for c in sc], hyps)
            out.update(stream_lm_cer=cer, stream_lm_wer=wer, stream_clips=len(sc))
            print(f"test streaming, beam finals + LM, on {len(sc)} clips: CER {cer:.3f} WER {wer:.3f}")
    return out


def pipeline_transcripts(pipe, waves: list[np.ndarray]) -> list[str]:
    """The finals' text of each 16 kHz wave streamed alone through ``pipe`` (a stream.Pipeline)."""
    out = []
    for w in waves:
        s = pipe.new_stream()
        events = s.feed(w, 16000) + s.finish()
        out.append(" ".join(e.text for e in events if e.type == "final" and e.text).strip())
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(DEFAULT_OUT))
    ap.add_argument("--data", type=Path, default=CACHE / "data")
    ap.add_argument("--max-clips", type=int, default=300, help="clips per synthetic set (0: all)")
    ap.add_argument("--stream-clips", type=int, default=40, help="test clips run through stream.Pipeline (0: skip)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--kenlm", type=Path, metavar="LM",
                    help="also decode the held-out clips with the beam search and this KenLM model (ARPA or "
                         "binary, e.g. from python -m train.lm; needs the kenlm package)")
    ap.add_argument("--lm-weight", type=float, default=0.5, help="LM weight with --kenlm (the stream's default)")
    ap.add_argument("--word-bonus", type=float, default=1.0, help="word bonus with --kenlm (the stream's default)")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    lm_beam = None
    if args.kenlm is not None:
        try:
            lm_beam = language_model_finaliser(model, args)
        except FileNotFoundError:
            ap.error(f"--kenlm {args.kenlm}: no such file (python -m train.lm writes one)")
        except ImportError as e:
            ap.error(f"--kenlm needs the kenlm package: {e}")
        except ValueError as e:
            ap.error(f"--kenlm: {e}")
    results: dict = {"model": args.model}
    rng = random.Random(0)

    def subset(clips):
        return clips if not args.max_clips or len(clips) <= args.max_clips else rng.sample(clips, args.max_clips)

    for split in ("test", "test_seen"):
        f = args.data / f"{split}.jsonl"
        if not f.exists():
            print(f"{split}: {f} missing, skipped")
            continue
        clips = subset(read_manifest(f))
        t = time.time()
        # One forward per clip serves the greedy numbers and, with --kenlm, the beam searches.
        log_probs = clip_log_probs(model, clips)
        hyps = greedy_transcripts(log_probs)
        refs = [c.text for c in clips]
        cer, wer = error_rates(refs, hyps)
        results[f"{split}_offline"] = {"cer": cer, "wer": wer, "clips": len(clips)}
        print(f"{split} offline: CER {cer:.3f} WER {wer:.3f} ({len(clips)} clips, {time.time() - t:.0f} s)")
        per_voice = defaultdict(lambda: ([], []))
        for c, h in zip(clips, hyps):
            per_voice[c.voice][0].append(c.text)
            per_voice[c.voice][1].append(h)
        pv = {v: error_rates(r, h)[0] for v, (r, h) in sorted(per_voice.items())}
        results[f"{split}_per_voice_cer"] = pv
        print("  per voice CER: " + ", ".join(f"{v} {c:.2f}" for v, c in pv.items()))
        for r, h in list(zip(refs, hyps))[:3]:
            print(f"  ref: {r}\n  hyp: {h}")
        if split == "test":
            eer = speaker_eer(model, clips)
            results["speaker_eer"] = eer
            print(f"speaker EER (held-out voices): {eer['eer_speaker']:.3f} same vs different speaker, "
                  f"{eer['eer_voice']:.3f} same speaker vs different source voice "
                  f"({eer['speakers']} speakers, {eer['trials']} trials)")
            if lm_beam is not None:
                results["test_language_model"] = language_model_rates(model, clips, log_probs, lm_beam, args,
                                                                      args.stream_clips)
            if args.stream_clips:
                sc = clips[: args.stream_clips]
                t = time.time()
                waves = [np.asarray(_load(c.path)) for c in sc]
                beam_hyps = stream_transcripts(model, waves)
                if beam_hyps is None:
                    print("streaming: stream.Pipeline not importable, skipped")
                else:
                    refs = [c.text for c in sc]
                    oc, ow = error_rates(refs, hyps[: len(sc)])
                    gcer, gwer = error_rates(refs, stream_transcripts(model, waves, beam=False))
                    scer, swer = error_rates(refs, beam_hyps)
                    # The streamed log-probs themselves (what partials show): finals without the second pass.
                    fcer, fwer = error_rates(refs, stream_transcripts(model, waves, beam=False, final_pass=False))
                    results["test_streaming"] = {"cer": scer, "wer": swer, "greedy_cer": gcer, "greedy_wer": gwer,
                                                 "first_pass_greedy_cer": fcer, "first_pass_greedy_wer": fwer,
                                                 "offline_cer_same_clips": oc, "clips": len(sc)}
                    print(f"test streaming (stream.Pipeline defaults) on {len(sc)} clips: greedy finals CER {gcer:.3f} "
                          f"WER {gwer:.3f}, beam finals CER {scer:.3f} WER {swer:.3f}; offline greedy {oc:.3f} "
                          f"(greedy gap {100 * (gcer - oc):+.1f} points); streamed log-probs without the final "
                          f"pass, greedy: CER {fcer:.3f} WER {fwer:.3f} (gap {100 * (fcer - oc):+.1f} points; "
                          f"{time.time() - t:.0f} s)")
    real = real_recordings()
    if real:
        hyps = transcribe_offline(model, [w for _, w, _ in real])
        refs = [t for _, _, t in real]
        cer, wer = error_rates(refs, hyps)
        groups = sorted({n.split("/")[0] for n, _, _ in real})
        results["real_offline"] = {"cer": cer, "wer": wer, "clips": len(real)}
        print(f"real recordings offline: CER {cer:.3f} WER {wer:.3f} ({len(real)} clips: {', '.join(groups)})")
        for g in groups:
            idx = [i for i, (n, _, _) in enumerate(real) if n.startswith(g + "/")]
            gc, gw = error_rates([refs[i] for i in idx], [hyps[i] for i in idx])
            results[f"real_{g}"] = {"cer": gc, "wer": gw, "clips": len(idx)}
            print(f"  {g}: CER {gc:.3f} WER {gw:.3f} ({len(idx)} clips)")
        for i in range(min(3, len(real))):
            print(f"  ref: {refs[i]}\n  hyp: {hyps[i]}")
    else:
        print("real recordings: none found (apt-get install asterisk-core-sounds-en-wav alsa-utils; "
              "python -m train.real_speech)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return results


def _load(path: str) -> np.ndarray:
    x, sr = sf.read(path, dtype="float32")
    return x


if __name__ == "__main__":
    main()

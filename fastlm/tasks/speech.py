"""Speech recognition: log-mel features computed in torch, a Transformer encoder (fastlm.nn blocks,
non-causal, RoPE) over 4x-subsampled frames, and a CTC head over characters; greedy and prefix
beam-search decoding; metrics WER and CER (jiwer).

    [task]
    train = "train.jsonl"     # {"audio": "clips/1.wav", "text": "..."} (paths relative to the file),
                              # or "demo:speech" (sentences synthesized with espeak-ng)
    n_mels = 40
    beam_size = 1             # 1: greedy; > 1: CTC prefix beam search
    [model]                   # n_layer, n_head, d_model, dropout of the encoder

Audio is PCM WAV (8/16/32-bit, any rate, stereo averaged to mono), read with Python's `wave`.
"""
from __future__ import annotations

import math
import types
import wave
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fastlm.nn import Block, LayerNorm, rope_cos_sin
from fastlm.tasks.base import DataFiles, Task
from fastlm.tasks.datasets import DatasetError, read_records, text_value
from fastlm.train.errors import ConfigError

BLANK = 0


# ---------------------------------------------------------------- audio and features

def read_wav(path: Path) -> tuple[torch.Tensor, int]:
    """(mono float32 waveform in [-1, 1], sample rate); OSError/wave.Error/ValueError when unreadable."""
    with wave.open(str(path), "rb") as w:
        width, channels, rate = w.getsampwidth(), w.getnchannels(), w.getframerate()
        frames = w.readframes(w.getnframes())
    if width == 1:
        x = (np.frombuffer(frames, np.uint8).astype(np.float32) - 128) / 128
    elif width == 2:
        x = np.frombuffer(frames, "<i2").astype(np.float32) / 32768
    elif width == 4:
        x = np.frombuffer(frames, "<i4").astype(np.float32) / 2147483648
    else:
        raise ValueError(f"{8 * width}-bit samples (expected 8, 16 or 32-bit PCM)")
    x = x.reshape(-1, channels).mean(axis=1)
    if x.size == 0:
        raise ValueError("no samples")
    return torch.from_numpy(x.copy()), rate


@lru_cache(maxsize=8)
def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int) -> torch.Tensor:
    """(n_mels, n_fft // 2 + 1) triangular filters evenly spaced on the HTK mel scale, 0 .. rate / 2."""
    def mel(f):
        return 2595.0 * math.log10(1.0 + f / 700.0)

    def hz(m):
        return 700.0 * (10 ** (m / 2595.0) - 1.0)

    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    edges = torch.tensor([hz(m) for m in torch.linspace(0, mel(sample_rate / 2), n_mels + 2).tolist()],
                         dtype=torch.float64)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs - lo) / (mid - lo)
    down = (hi - freqs) / (hi - mid)
    return torch.clamp(torch.minimum(up, down), min=0).float()


def log_mel(waveform: torch.Tensor, sample_rate: int, n_mels: int = 40, normalize: bool = True) -> torch.Tensor:
    """(frames, n_mels) log-mel energies: 25 ms Hann windows (in FFTs of the next power of two) every
    10 ms (normalize: zero mean and
    unit variance per channel over the utterance)."""
    win = int(round(0.025 * sample_rate))
    hop = int(round(0.010 * sample_rate))
    n_fft = 1 << (win - 1).bit_length()
    if waveform.numel() < n_fft:
        waveform = F.pad(waveform, (0, n_fft - waveform.numel()))
    spec = torch.stft(waveform, n_fft, hop_length=hop, win_length=win, window=torch.hann_window(win),
                      center=False, return_complex=True)
    power = spec.abs() ** 2  # (freq, frames)
    feats = torch.log(mel_filterbank(n_mels, n_fft, sample_rate) @ power + 1e-6).t()
    if not normalize:
        return feats
    return (feats - feats.mean(0)) / (feats.std(0) + 1e-5) if feats.shape[0] > 1 else feats - feats.mean(0)


# ---------------------------------------------------------------- model

class SpeechEncoder(nn.Module):
    """log-mel (B, T, n_mels) -> two stride-2 convolutions -> non-causal Transformer blocks (RoPE).

    Padding frames are never computed: the valid frames of each row run as one packed sequence
    (cu_seqlens), as fastlm.models.Encoder does.
    """

    def __init__(self, n_mels: int, d_model: int, n_layer: int, n_head: int, dropout: float = 0.0):
        super().__init__()
        if d_model % n_head:
            raise ConfigError(f"model.n_head = {n_head}: expected a divisor of model.d_model = {d_model}")
        self.config = types.SimpleNamespace(d_model=d_model, n_head=n_head, head_dim=d_model // n_head)
        self.subsample = nn.Sequential(nn.Conv1d(n_mels, d_model, 3, stride=2, padding=1), nn.GELU(),
                                       nn.Conv1d(d_model, d_model, 3, stride=2, padding=1), nn.GELU())
        self.blocks = nn.ModuleList(
            Block(d_model=d_model, n_head=n_head, n_kv_head=n_head, head_dim=d_model // n_head, d_ff=4 * d_model,
                  norm="layernorm", activation="gelu", bias=True, dropout=dropout, layer_idx=i, causal=False)
            for i in range(n_layer))
        self.norm = LayerNorm(d_model, 1e-5)

    @staticmethod
    def output_lengths(lengths: torch.Tensor) -> torch.Tensor:
        for _ in range(2):  # each conv: kernel 3, stride 2, padding 1
            lengths = (lengths - 1) // 2 + 1
        return lengths

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.subsample(feats.transpose(1, 2)).transpose(1, 2)  # (B, T', d)
        out_lengths = self.output_lengths(lengths)
        b, t, d = x.shape
        mask = torch.arange(t, device=x.device)[None] < out_lengths[:, None]
        index = mask.reshape(-1).nonzero().squeeze(1)
        cu = F.pad(torch.cumsum(out_lengths, 0), (1, 0)).to(torch.int32)
        positions = torch.cat([torch.arange(int(n), device=x.device) for n in out_lengths])
        rope = rope_cos_sin(positions, self.config.head_dim, 10000.0)
        h = x.reshape(b * t, d)[index][None]
        for block in self.blocks:
            h = block(h, rope, None, cu, int(out_lengths.max()))
        h = self.norm(h)[0]
        return h.new_zeros(b * t, d).index_copy(0, index, h).view(b, t, d), out_lengths


class CTCModel(nn.Module):
    def __init__(self, body: SpeechEncoder, n_symbols: int):
        super().__init__()
        self.body = body
        self.head = nn.Linear(body.config.d_model, n_symbols + 1)  # + the blank (id 0)

    def forward(self, batch: dict) -> dict:
        h, lengths = self.body(batch["features"], batch["feature_lengths"])
        log_probs = self.head(h).float().log_softmax(-1)
        out = {"log_probs": log_probs, "lengths": lengths}
        if "targets" in batch:
            out["loss"] = F.ctc_loss(log_probs.transpose(0, 1), batch["targets"], lengths, batch["target_lengths"],
                                     blank=BLANK, zero_infinity=True)
        return out


# ---------------------------------------------------------------- decoding

def ctc_greedy(log_probs: torch.Tensor) -> list[int]:
    """Best symbol per frame, repeats merged, blanks dropped. log_probs (T, C)."""
    out, prev = [], BLANK
    for s in log_probs.argmax(-1).tolist():
        if s != prev and s != BLANK:
            out.append(s)
        prev = s
    return out


def ctc_beam_search(log_probs: torch.Tensor, beam_size: int) -> list[int]:
    """CTC prefix beam search (no language model): the most probable label sequence, summing
    over its alignments, among the beam_size best prefixes kept at each frame."""
    lp = log_probs.double().tolist()
    neg = float("-inf")

    def add(a, b):
        if a == neg:
            return b
        if b == neg:
            return a
        m = max(a, b)
        return m + math.log(math.exp(a - m) + math.exp(b - m))

    beams = {(): (0.0, neg)}  # prefix -> (log p ending in blank, log p ending in its last symbol)
    for frame in lp:
        nxt: dict[tuple, list[float]] = {}
        for prefix, (pb, pnb) in beams.items():
            total = add(pb, pnb)
            entry = nxt.setdefault(prefix, [neg, neg])
            entry[0] = add(entry[0], total + frame[BLANK])
            if prefix:  # the last symbol repeated without a blank between: same prefix
                entry[1] = add(entry[1], pnb + frame[prefix[-1]])
            for s in range(1, len(frame)):
                ext = prefix + (s,)
                e = nxt.setdefault(ext, [neg, neg])
                # after the same symbol a blank must separate the two
                e[1] = add(e[1], (pb if prefix and prefix[-1] == s else total) + frame[s])
        beams = dict(sorted(nxt.items(), key=lambda kv: add(*kv[1]), reverse=True)[:beam_size])
    return list(max(beams.items(), key=lambda kv: add(*kv[1]))[0])


# ---------------------------------------------------------------- the task

@dataclass
class SpeechSection(DataFiles):
    audio_field: str = "audio"
    text_field: str = "text"
    n_mels: int = 40
    beam_size: int = 1
    lowercase: bool = True

    def validate(self) -> None:
        if self.n_mels < 8:
            raise ConfigError(f"task.n_mels = {self.n_mels}: expected at least 8")
        if self.beam_size < 1:
            raise ConfigError(f"task.beam_size = {self.beam_size}: expected a positive integer")


class SpeechTask(Task):
    name = "speech"
    Section = SpeechSection
    uses_tokenizer = False

    def read_split(self, tc, path: Path, info) -> list[dict]:
        t = tc.task
        out = []
        for r in read_records(path, (t.audio_field, t.text_field)):
            text = text_value(r, t.text_field)
            text = " ".join((text.lower() if t.lowercase else text).split())
            audio = Path(text_value(r, t.audio_field))
            audio = audio if audio.is_absolute() else Path(path).parent / audio
            try:
                wav, rate = read_wav(audio)
            except (OSError, EOFError, wave.Error, ValueError) as e:
                raise DatasetError(f"{r.where}: cannot read audio {audio}: {e}") from None
            if info is not None:
                unknown = sorted(set(text) - set(info["symbols"]))
                if unknown:
                    raise DatasetError(f"{r.where}: characters {''.join(unknown)!r} do not occur in the training "
                                       f"transcripts")
            out.append({"audio": str(audio), "text": text, "wav": wav, "rate": rate})
        return out

    def make_info(self, tc, records) -> dict:
        return {"symbols": sorted({ch for r in records for ch in r["text"]})}

    def tokenizer_texts(self, records):
        return None  # characters, no tokenizer

    def encode(self, tc, records, tok, info) -> list[dict]:
        index = {ch: i + 1 for i, ch in enumerate(info["symbols"])}  # 0 is the blank
        return [{"features": log_mel(r["wav"], r["rate"], tc.task.n_mels), "labels": [index[c] for c in r["text"]],
                 "text": r["text"], "audio": r["audio"]} for r in records]

    def build_body(self, tc):
        m = tc.config.model
        return SpeechEncoder(tc.task.n_mels, m.d_model, m.n_layer, m.n_head, m.dropout), None

    def build_model(self, tc, body, info) -> nn.Module:
        return CTCModel(body, len(info["symbols"]))

    def collate(self, examples) -> dict:
        lengths = torch.tensor([e["features"].shape[0] for e in examples])
        feats = torch.zeros(len(examples), int(lengths.max()), examples[0]["features"].shape[1])
        for i, e in enumerate(examples):
            feats[i, :e["features"].shape[0]] = e["features"]
        target_lengths = torch.tensor([len(e["labels"]) for e in examples])
        targets = torch.zeros(len(examples), int(target_lengths.max()), dtype=torch.long)
        for i, e in enumerate(examples):
            targets[i, :len(e["labels"])] = torch.tensor(e["labels"])
        return {"features": feats, "feature_lengths": lengths, "targets": targets, "target_lengths": target_lengths}

    @torch.no_grad()
    def evaluate(self, model, examples, info, device, autocast, batch_size, tc=None):
        from fastlm.eval.metrics import cer, wer

        was_training = model.training
        model.eval()
        symbols = info["symbols"]
        hyps, loss, n = [], 0.0, 0
        for i in range(0, len(examples), batch_size):
            chunk = examples[i:i + batch_size]
            batch = {k: v.to(device) for k, v in self.collate(chunk).items()}
            with autocast:
                out = model(batch)
            loss, n = loss + out["loss"].item() * len(chunk), n + len(chunk)
            for lp, length in zip(out["log_probs"].cpu(), out["lengths"].tolist()):
                ids = ctc_greedy(lp[:length]) if tc.task.beam_size == 1 else ctc_beam_search(lp[:length], tc.task.beam_size)
                hyps.append("".join(symbols[s - 1] for s in ids))
        model.train(was_training)
        refs = [e["text"] for e in examples]
        result = {"loss": loss / max(n, 1), "wer": wer(refs, hyps), "cer": cer(refs, hyps), "examples": len(examples),
                  "decoding": "greedy" if tc.task.beam_size == 1 else f"beam {tc.task.beam_size}"}
        return result, [{"audio": e["audio"], "reference": r, "prediction": h} for e, r, h in zip(examples, refs, hyps)]

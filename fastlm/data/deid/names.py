"""Person and location names: a small token-classification model built on fastlm's Encoder.

Each word becomes two ids: a vocabulary id (common words; every other word is one unknown id) and a
feature id (its shape: lower / Capitalised / UPPER / digits / punctuation, times whether faker's name
lists know it as a first name, a last name or a place). A 2-layer BERT-style encoder (d_model 32) reads windows of
up to WINDOW words and tags each word O / B-PER / I-PER / B-LOC / I-LOC. It is trained on sentences
generated from TRAIN_TEMPLATES with faker names of several locales, plus all-O text (Python's own
documentation, faker's lorem, greetings, headings, dates), in under a minute on one CPU core; the weights are
shipped in the package (fp16 safetensors, rebuilt by `python -m fastlm.data.deid.names`); without
that file it is trained on first use and cached under $FASTLM_CACHE/deid. Inference is batched
and deterministic, and skips windows without a candidate (a capitalised word that is rare or listed).
"""
from __future__ import annotations

import bisect
import contextlib
import datetime as dt
import json
import os
import random
import re
import threading
from functools import lru_cache
from itertools import compress
from operator import itemgetter
from pathlib import Path

import torch
from torch import nn

from fastlm.data.deid.gazetteers import LOCALES, faker_class, gazetteers, world_cities

VERSION = 1                      # bump when features, templates or training change: the cache name carries it
WINDOW = 64                      # words per model input
CONTEXT = 12                     # words kept on each side of the first and last candidate of a window
LABELS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")
KIND = {"PER": "person", "LOC": "location"}
PAD, UNK = 0, 1
SHAPES = 5                       # lower, Capitalised, UPPER, has a digit, punctuation
N_FEATURES = SHAPES * 8          # x (first name?, last name?, place?)

WORD = re.compile(r"\w+(?:['’.-]\w+)*|[^\w\s]")

# Training sentences. {PER}: a person's name (first last, first, title last, ...), {LOC}: a city, country or
# state. The benchmark (benchmarks/deid.py) and the tests use other templates.
TRAIN_TEMPLATES = (
    "{PER} called yesterday about the invoice.",
    "Please forward the report to {PER} before Friday.",
    "My name is {PER} and I live in {LOC}.",
    "{PER} moved from {LOC} to {LOC} last year.",
    "Dear {PER}, thank you for your letter.",
    "The meeting with {PER} and {PER} is postponed.",
    "According to {PER}, the shipment left {LOC} on Monday.",
    "She was born in {LOC} and studied with {PER}.",
    "Patient {PER} was admitted with chest pain.",
    "Signed: {PER}",
    "I met {PER} at the conference in {LOC}.",
    "Contact {PER} for questions about the contract.",
    "{PER} is the new manager of the {LOC} office.",
    "The flight to {LOC} was cancelled, said {PER}.",
    "Thanks, {PER}!",
    "We visited {LOC} in June.",
    "The company opened a branch in {LOC}.",
    "Weather in {LOC}: sunny, 24 degrees.",
    "Best regards, {PER}",
    "{PER} wrote: the code review is done.",
    "Ask {PER} or {PER} to approve the change.",
    "Der Vertrag wurde von {PER} in {LOC} unterschrieben.",
    "Herr {PER} wohnt seit Jahren in {LOC}.",
    "Mit freundlichen Grüßen, {PER}",
    "Je m'appelle {PER} et j'habite à {LOC}.",
    "Madame {PER} a appelé ce matin.",
    "El señor {PER} viajó a {LOC} la semana pasada.",
    "Il signor {PER} abita a {LOC}.",
    "{PER} heeft gisteren gebeld vanuit {LOC}.",
    "Pan {PER} mieszka w {LOC}.",
    "Hej {PER}, välkommen till {LOC}!",
    "O cliente {PER} mora em {LOC}.",
    "From: {PER} <mail> Subject: trip to {LOC}",
    "{PER} ({LOC}) won the award.",
    "The author, {PER}, teaches in {LOC}.",
    "{PER} joined the team on {DATE}.",
    "On {DATE}, {PER} arrived in {LOC}.",
    "The lease signed by {PER} on {DATE} ends next year.",
)
TITLES = ("Mr.", "Mrs.", "Ms.", "Dr.", "Prof.")
# Capitalised words that are not names (greetings, headings, organisational words).
NEGATIVES = (
    "Hello everyone, welcome back.", "Hi all, quick update below.", "Dear Sir or Madam,", "Thanks, Team",
    "Best regards, The Support Team", "Re: Follow-up on the Quarterly Review", "Status: Approved by Finance",
    "Note: the Steering Group meets on Thursday.", "Agenda: Budget, Hiring, Roadmap", "Table 2: Results by Region",
    "Section 4.1 Overview", "Chapter One", "Welcome to the Annual General Meeting!", "Q3 Sales Report",
    "Figure 3 shows the results.", "Proceed to Gate 12.", "Take the lift to Level 4.", "Building C is closed.",
    "See Appendix A for details.", "Phase 2 starts in May.", "Floor 3, Suite 200.", "Sales peaked in April.",
    "The festival runs from June to August.", "Version 2.0 ships on Monday.", "Step 1: Open the Settings menu.",
)
DATE_FORMATS = ("%d %B %Y", "%B %d, %Y", "%B %Y", "%d %b %Y", "%A, %B %d")

PACKAGED = Path(__file__).with_name(f"names-v{VERSION}.safetensors")  # fp16 weights (~0.5 MB)
_lock = threading.Lock()


# ---------------------------------------------------------------- features

def words(text: str):
    """(start, end) of each word and punctuation mark."""
    return [m.span() for m in WORD.finditer(text)]


def _shape(w: str) -> int:
    if not w[0].isalnum():
        return 4
    if any(c.isdigit() for c in w):
        return 3
    if w[0].isupper():
        return 2 if len(w) > 1 and w.isupper() else 1
    return 0


class Featurizer:
    """word -> (vocabulary id, feature id, candidate?), memoised (corpora repeat their words).

    A candidate is a Capitalised or UPPER word that is rare (not in the vocabulary) or on a name list: the
    model runs only around candidates."""

    def __init__(self, vocab: list[str]):
        self.vocab = vocab
        self.index = {w: i + 2 for i, w in enumerate(vocab)}
        g = gazetteers()
        self.first, self.last, self.place = g["first"], g["last"], g["place"]
        self.cache: dict[str, tuple[int, int, bool]] = {}

    def __call__(self, w: str) -> tuple[int, int, bool]:
        hit = self.cache.get(w)
        if hit is None:
            low = w.lower()
            parts = low.replace("’", "'").split("-") if "-" in low else (low,)
            bits = (any(p in self.first for p in parts) | 2 * any(p in self.last for p in parts)
                    | 4 * any(p in self.place for p in parts))
            vid, shape = self.index.get(low, UNK), _shape(w)
            hit = (vid, shape * 8 + bits, shape in (1, 2) and (vid == UNK or bits > 0))
            if len(self.cache) < 1 << 20:
                self.cache[w] = hit
        return hit


def _windows(spans, text: str):
    """Cut a document's words into windows of <= WINDOW words (at a sentence end where possible)."""
    i, n = 0, len(spans)
    while i < n:
        j = min(i + WINDOW, n)
        if j < n:
            for k in range(j - 1, i + WINDOW // 2, -1):
                if text[spans[k][0]] in ".!?\n":
                    j = k + 1
                    break
        yield i, j
        i = j


# ---------------------------------------------------------------- model

class NameTagger(nn.Module):
    """fastlm's Encoder (vocabulary ids as tokens, feature ids as token types) and a per-word label head."""

    def __init__(self, vocab_size: int, d_model: int = 32, n_layer: int = 2):
        super().__init__()
        from fastlm.models.encoder import Encoder, EncoderConfig

        cfg = EncoderConfig(family="bert", vocab_size=vocab_size, n_layer=n_layer, n_head=d_model // 16,
                            d_model=d_model, d_ff=2 * d_model, max_seq_len=WINDOW, type_vocab_size=N_FEATURES,
                            pad_token_id=PAD)
        self.encoder = Encoder(cfg)
        self.head = nn.Linear(d_model, len(LABELS))

    def forward(self, ids, features, mask):
        return self.head(self.encoder(ids, mask, features))


class NameModel:
    """A trained tagger with its vocabulary: find(texts) -> spans per text."""

    def __init__(self, tagger: NameTagger, vocab: list[str]):
        self.tagger = tagger.eval()
        self.featurize = Featurizer(vocab)

    def find(self, texts: list[str], batch_size: int = 256) -> list[list[tuple[int, int, str]]]:
        """(start, end, "person" | "location") of the names in each text, in text order."""
        # The matrices are tiny: more threads only contend (10x slower on a busy machine). One, then restored.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return self._find(texts, batch_size)
        finally:
            torch.set_num_threads(threads)

    @torch.inference_mode()
    def _find(self, texts: list[str], batch_size: int) -> list[list[tuple[int, int, str]]]:
        items = []  # (text index, word spans of a window, vocabulary ids, feature ids)
        featurize = self.featurize
        for t, text in enumerate(texts):
            ws = WORD.findall(text)
            feats = list(map(featurize.cache.get, ws))  # C-speed lookups; the rare new word goes through featurize
            if None in feats:
                feats = [f or featurize(w) for f, w in zip(feats, ws)]
            cands = list(compress(range(len(ws)), map(itemgetter(2), feats)))
            if not cands:
                continue
            spans = words(text)
            for i, j in _windows(spans, text):
                lo, hi = bisect.bisect_left(cands, i), bisect.bisect_left(cands, j)
                if lo == hi:
                    continue
                # Only the words within CONTEXT of the window's first and last candidate.
                i, j = max(i, cands[lo] - CONTEXT), min(j, cands[hi - 1] + CONTEXT + 1)
                items.append((t, spans[i:j], [x[0] for x in feats[i:j]], [x[1] for x in feats[i:j]]))
        out: list[list[tuple[int, int, str]]] = [[] for _ in texts]
        items.sort(key=lambda it: len(it[1]))
        for b in range(0, len(items), batch_size):
            chunk = items[b:b + batch_size]
            width = len(chunk[-1][1])
            ids = torch.tensor([v + [PAD] * (width - len(v)) for _, _, v, _ in chunk])
            feats = torch.tensor([f + [0] * (width - len(f)) for _, _, _, f in chunk])
            mask = (ids != PAD).long()
            labels = self.tagger(ids, feats, mask).argmax(-1)
            for r in labels.any(-1).nonzero().flatten().tolist():  # only rows with a name
                t, spans, _, _ = chunk[r]
                out[t].extend(_decode(texts[t], spans, labels[r, :len(spans)].tolist()))
        for spans in out:
            spans.sort()
        return out


def _decode(text, spans, labels):
    """Word labels -> (start, end, kind): a B- starts a name, I- of the same kind continues it.

    Punctuation is never part of a name except an initial's dot inside one ("John A. Smith"); any other
    punctuation ends the name ("John Smith. Later" is "John Smith")."""
    found, cur, prev_len = [], None, 0
    for (a, b), lab in zip(spans, labels):
        name = LABELS[lab]
        if not text[a].isalnum():
            if not (cur is not None and text[a] == "." and prev_len == 1):
                cur = None
            prev_len = 0
            continue
        prev_len = b - a
        if name == "O":
            cur = None
            continue
        tag, kind = name.split("-")
        if tag == "I" and cur is not None and cur[2] == KIND[kind]:
            cur[1] = b
        else:
            cur = [a, b, KIND[kind]]
            found.append(cur)
    return _join_first_names(text, found)


def _join_first_names(text, found):
    """A place right before a person, one space apart, whose word is a first name ("Maria" in "Maria Rossi": also
    a place in faker's lists) is the person's first name: the two become one person."""
    first = gazetteers()["first"]
    out = []
    for c in found:
        if (out and c[2] == "person" and out[-1][2] == "location" and text[out[-1][1]:c[0]] == " "
                and text[out[-1][0]:out[-1][1]].lower() in first):
            out[-1] = [out[-1][0], c[1], "person"]
        else:
            out.append(c)
    return [tuple(c) for c in out]


# ---------------------------------------------------------------- training data

def _person(fake, rng: random.Random) -> str:
    r = rng.random()
    if r < 0.5:
        return f"{fake.first_name()} {fake.last_name()}"
    if r < 0.65:
        return fake.first_name()
    if r < 0.8:
        return f"{rng.choice(TITLES)} {fake.last_name()}"
    if r < 0.9:
        return f"{fake.first_name()} {rng.choice('ABCDEFGHJKLMNPRSTW')}. {fake.last_name()}"
    return f"{fake.first_name()} {fake.first_name()} {fake.last_name()}"


_CITIES: dict[int, tuple[str, ...]] = {}


def _sorted_cities(fake) -> tuple[str, ...]:
    if id(fake) not in _CITIES:
        _CITIES[id(fake)] = tuple(sorted(getattr(fake.provider("faker.providers.address"), "cities", None) or ()))
    return _CITIES[id(fake)]


def _place(fake, rng: random.Random) -> str:
    r = rng.random()
    if r < 0.1:
        return rng.choice(world_cities())
    if r < 0.6:
        # A locale with a list of cities: drawn from it sorted (faker's it_IT city() picks from a set, whose
        # order changes with the process's hash seed: the training data would not be reproducible).
        cities = _sorted_cities(fake)
        return rng.choice(cities) if cities else fake.city()
    if r < 0.85 or not hasattr(fake, "state"):
        return fake.country()
    return fake.state()


def labelled_sentence(template: str, fakes, rng: random.Random) -> tuple[str, list[tuple[int, int, str]]]:
    """A template filled with faker names: (text, [(start, end, kind)])."""
    text, spans = "", []
    for piece in re.split(r"(\{PER\}|\{LOC\}|\{DATE\}|<mail>)", template):
        fake = rng.choice(fakes)
        if piece == "{PER}":
            value, kind = _person(fake, rng), "person"
        elif piece == "{LOC}":
            value, kind = _place(fake, rng), "location"
        elif piece == "<mail>":
            value, kind = fake.email(), None
        elif piece == "{DATE}":  # month and day names are not names
            # Drawn from rng, not faker's date_object(), whose range ends today (the data would change daily).
            day = dt.date(1950, 1, 1) + dt.timedelta(days=rng.randrange(27_000))
            value, kind = day.strftime(rng.choice(DATE_FORMATS)), None
        else:
            value, kind = piece, None
        if kind is not None:
            # A title is not part of the name.
            skip = next((len(t) + 1 for t in TITLES if value.startswith(t + " ")), 0)
            spans.append((len(text) + skip, len(text) + len(value), kind))
        text += value
    return text, spans


def word_labels(text: str, spans) -> tuple[list[tuple[int, int]], list[int]]:
    ws = words(text)
    labels = [0] * len(ws)
    for a, b, kind in spans:
        inside = [k for k, (s, e) in enumerate(ws) if s >= a and e <= b]
        tag = "PER" if kind == "person" else "LOC"
        inside = [k for k in inside if text[ws[k][0]].isalnum()]  # punctuation stays O (_decode keeps initials' dots)
        for n, k in enumerate(inside):
            labels[k] = LABELS.index(("B-" if n == 0 else "I-") + tag)
    return ws, labels


def _plain_sentences(rng: random.Random, count: int) -> list[str]:
    """All-O text: sentences of Python's documentation (real capitalised non-names) and faker lorem."""
    import pydoc_data.topics

    sents = []
    for topic in sorted(pydoc_data.topics.topics):
        for s in re.split(r"(?<=[.!?])\s+|\n\s*\n", pydoc_data.topics.topics[topic]):
            s = " ".join(s.split())
            if 20 <= len(s) <= 300:
                sents.append(s)
    rng.shuffle(sents)
    return sents[:count]


def training_examples(count: int, seed: int = 0):
    """`count` windows of (text, word spans, labels): 1-3 labelled sentences, sometimes with plain text."""
    Faker = faker_class()
    rng = random.Random(seed)
    fakes = []
    for i, loc in enumerate(LOCALES):
        fake = Faker(loc)
        fake.seed_instance(seed * 1000 + i)
        fakes.append(fake)
    plain = _plain_sentences(rng, 4000)
    examples = []
    for _ in range(count):
        parts = []
        for _ in range(rng.randint(1, 3)):
            r = rng.random()
            if r < 0.25:
                parts.append((rng.choice(plain), []))
            elif r < 0.32:  # Title Case Text: capitals alone do not make a name
                parts.append((" ".join(w[:1].upper() + w[1:] for w in rng.choice(plain).split()), []))
            elif r < 0.4:
                fake = rng.choice(fakes)
                parts.append((rng.choice((fake.sentence(nb_words=rng.randint(4, 12)), rng.choice(NEGATIVES))), []))
            elif r < 0.44:
                en = fakes[0]
                parts.append((rng.choice((f"{en.job()}.", f"{en.catch_phrase()}.", f"{en.bs().capitalize()}.")), []))
            elif r < 0.6:  # a name at a random place in real text: names are not tied to the templates' contexts
                ws = rng.choice(plain).split()
                k = rng.randrange(len(ws) + 1)
                template = " ".join([*ws[:k], rng.choice(("{PER}", "{PER}", "{LOC}")), *ws[k:]])
                parts.append(labelled_sentence(template, fakes, rng))
            else:
                parts.append(labelled_sentence(rng.choice(TRAIN_TEMPLATES), fakes, rng))
        text, spans = "", []
        for s, sp in parts:
            off = len(text) + (1 if text else 0)
            text = f"{text} {s}" if text else s
            spans += [(a + off, b + off, k) for a, b, k in sp]
        ws, labels = word_labels(text, spans)
        examples.append((text, ws[:WINDOW], labels[:WINDOW]))
    return examples, plain


def build_vocab(examples, plain, size: int = 6000) -> list[str]:
    """Common words: the lorem word lists and the plain text's words (names are left to the features)."""
    from collections import Counter

    g = gazetteers()
    names = g["first"] | g["last"] | g["place"]
    counts = Counter()
    Faker = faker_class()
    for loc in LOCALES:
        counts.update(w.lower() for w in Faker(loc).provider("faker.providers.lorem").word_list)
    for s in plain:
        counts.update(s[a:b].lower() for a, b in words(s))
    for text, ws, labels in examples:  # template words (labelled O), never the names themselves
        counts.update(w for w in (text[a:b].lower() for (a, b), lab in zip(ws, labels) if lab == 0) if w not in names)
    return [w for w, _ in counts.most_common(size)]


# ---------------------------------------------------------------- training and the cache

def train_name_model(steps: int = 2500, examples: int = 12000, seed: int = 0, batch_size: int = 64,
                     d_model: int = 32, n_layer: int = 2, log=None) -> NameModel:
    """Train the tagger from scratch (deterministic for a seed on one thread count)."""
    torch.manual_seed(seed)
    data, plain = training_examples(examples, seed)
    vocab = build_vocab(data, plain)
    featurize = Featurizer(vocab)
    n = len(data)
    ids = torch.zeros(n, WINDOW, dtype=torch.long)
    feats = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for r, (text, ws, lab) in enumerate(data):
        f = [featurize(text[a:b]) for a, b in ws]
        ids[r, :len(f)] = torch.tensor([x[0] for x in f])
        feats[r, :len(f)] = torch.tensor([x[1] for x in f])
        labels[r, :len(lab)] = torch.tensor(lab)
    tagger = NameTagger(len(vocab) + 2, d_model, n_layer)
    opt = torch.optim.AdamW(tagger.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    tagger.train()
    for step in range(steps):
        rows = torch.randint(0, n, (batch_size,), generator=gen)
        width = int((ids[rows] != PAD).sum(1).max())
        x, f, y = ids[rows, :width], feats[rows, :width], labels[rows, :width]
        mask = (x != PAD).long()
        # Unknown-word dropout: a common word sometimes looks unknown, as rarer words will at inference.
        drop = (torch.rand(x.shape, generator=gen) < 0.1) & (x > UNK)
        x = torch.where(drop, torch.full_like(x, UNK), x)
        logits = tagger(x, f, mask)
        loss = nn.functional.cross_entropy(logits.reshape(-1, len(LABELS)), y.reshape(-1), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log is not None and step % 100 == 0:
            log(f"step {step}: loss {loss.item():.4f}")
    return NameModel(tagger, vocab)


def cache_path(cache_dir: str | Path | None = None) -> Path:
    from fastlm.data.prepare import default_cache_dir

    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / "deid" / f"names-v{VERSION}.safetensors"


def save_name_model(model: NameModel, path: Path, dtype: torch.dtype = torch.float32) -> None:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    state = {k: v.to(dtype).contiguous() for k, v in model.tagger.state_dict().items()}
    c = model.tagger.encoder.config
    save_file(state, str(tmp), metadata={"vocab": json.dumps(model.featurize.vocab), "version": str(VERSION),
                                         "d_model": str(c.d_model), "n_layer": str(c.n_layer)})
    os.replace(tmp, path)


def load_name_model(path: Path) -> NameModel:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    vocab = json.loads(meta["vocab"])
    tagger = NameTagger(len(vocab) + 2, int(meta.get("d_model", 32)), int(meta.get("n_layer", 2)))
    tagger.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
    return NameModel(tagger, vocab)


@lru_cache(maxsize=1)
def name_model() -> NameModel:
    """The model shipped in the package (PACKAGED); without it, the cached one, trained and saved on first use."""
    from safetensors import SafetensorError

    with _lock:
        for path in (PACKAGED, cache_path()):
            if path.exists():
                with contextlib.suppress(OSError, ValueError, KeyError, RuntimeError, SafetensorError):
                    return load_name_model(path)  # a damaged file is passed over (and the cache rebuilt)
        model = train_name_model()
        save_name_model(model, cache_path())
        return model


if __name__ == "__main__":  # python -m fastlm.data.deid.names: retrain the packaged model (~45 s on one core)
    import time

    t0 = time.perf_counter()
    save_name_model(train_name_model(log=print), PACKAGED, torch.float16)
    print(f"wrote {PACKAGED} ({PACKAGED.stat().st_size / 1e6:.2f} MB) in {time.perf_counter() - t0:.1f}s")

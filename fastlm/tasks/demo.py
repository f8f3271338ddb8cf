"""Demo datasets built at run time from this machine's gettext catalogs (no download).

    paths = demo_dataset("langid")     # {"train": Path, "validation": Path}, JSONL, cached

The translated messages of installed programs (/usr/share/locale/<lang>/LC_MESSAGES/*.mo, read
with Python's gettext) give real sentences in many languages:

    langid     classify the language of a message (de, fr, es, it, nl, sv)      text, label
    langid-groups  its language family, with a planted group correlation         text, label, group
               (fastlm/tasks/fairness_demo.py)
    en-de      English -> German message pairs                                 source, target

and the installed Debian packages' descriptions (/var/lib/dpkg/status) a summarization demo:

    summaries  long description -> one-line synopsis                          prompt, response

and extractive question answering in SQuAD JSON (train.json, validation.json), from the en-de
pairs: a context lists several 'The German for "X" is "Y".' facts, a question asks for one:

    qa         What is the German for "X"?  ->  Y (a span of the context)

and speech recognition: short English messages spoken by espeak-ng (voices and speeds varied),
WAV files with a JSONL of {"audio", "text"}:

    speech     clips/N.wav -> its sentence

and image captioning: synthetic 32 x 32 pictures of shapes drawn with Pillow (fastlm.data.images), each
with its exact caption and attributes:

    captioning images/N.png -> "two red circles at the top, the word cat"    image, caption, shape, ...

A task config names one as `train = "demo:langid"` ("demo:langid:600": 600 examples). A machine
without the catalogs (or espeak-ng, for speech) gets a clear error saying what is missing. The
files are written under $FASTLM_CACHE/tasks (default ~/.cache/fastlm/tasks), built once.
"""
from __future__ import annotations

import gettext
import json
import os
import random
import re
from pathlib import Path
from typing import Iterator

from fastlm.tasks.datasets import DatasetError

LOCALE_DIR = Path("/usr/share/locale")
LANGID_LANGUAGES = ("de", "fr", "es", "it", "nl", "sv")
DEMOS = ("langid", "langid-groups", "en-de", "summaries", "qa", "speech", "captioning")
DPKG_STATUS = Path("/var/lib/dpkg/status")
DEMO_PREFIX = "demo:"


def locale_dir() -> Path:
    return Path(os.environ.get("FASTLM_LOCALE_DIR", LOCALE_DIR))


def catalog_messages(lang: str, root: Path | None = None) -> Iterator[tuple[str, str, str]]:
    """(domain, English msgid, translated msgstr) of every singular message of `lang`."""
    root = root or locale_dir()
    for mo in sorted((root / lang / "LC_MESSAGES").glob("*.mo")):
        try:
            with open(mo, "rb") as f:
                catalog = gettext.GNUTranslations(f)._catalog  # the only way to list a catalog
        except Exception:  # noqa: BLE001 - a legacy encoding or a damaged file (OSError, struct, ...)
            continue  # the other catalogs are enough
        for msgid, msgstr in catalog.items():
            if isinstance(msgid, str) and msgid and isinstance(msgstr, str) and msgstr:
                yield mo.stem, msgid, msgstr


_MARKUP = re.compile(r"<[^>]{1,40}>|(?<!%)%[-+ #0-9.]*[a-zA-Z]|\{[^}]{0,20}\}|[_&](?=\w)")


def clean_message(text: str) -> str | None:
    """One line of prose, or None: markup, format specifiers and accelerator marks removed."""
    text = " ".join(_MARKUP.sub("", text).replace("%%", "%").split())
    if not 12 <= len(text) <= 120 or sum(ch.isalpha() for ch in text) < 0.6 * len(text):
        return None
    return text


def demo_dataset(name: str, cache_dir: str | Path | None = None, *, size: int | None = None,
                 seed: int = 0) -> dict[str, Path]:
    """{"train": path, "validation": path} of a demo dataset of `size` examples (default 3000;
    speech 600), built if missing."""
    if name not in DEMOS:
        raise DatasetError(f"unknown demo dataset {name!r} (expected one of: {', '.join(DEMOS)})")
    size = size or (600 if name == "speech" else 3000)
    from fastlm.data import default_cache_dir

    root = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "tasks"
    if name == "langid-groups":
        from fastlm.tasks.fairness_demo import planted_group_dataset

        return planted_group_dataset(root, size=size, seed=seed, cache_dir=cache_dir)
    out = root / f"{name}-{size}-{seed}"
    suffix = ".json" if name == "qa" else ".jsonl"
    paths = {"train": out / f"train{suffix}", "validation": out / f"validation{suffix}"}
    if all(p.is_file() for p in paths.values()):
        return paths
    if name == "speech":
        _speech(out, paths, size, seed)
        return paths
    if name == "captioning":
        _captioning(out, paths, size, seed)
        return paths
    if name == "qa":
        out.mkdir(parents=True, exist_ok=True)
        pairs = _en_de_records(size, seed)
        n_val = max(6, len(pairs) // 10)
        for split, rows in (("validation", pairs[:n_val]), ("train", pairs[n_val:])):
            _write_atomic(paths[split], json.dumps(_squad(rows, seed), ensure_ascii=False))
        return paths
    build = {"langid": _langid_records, "en-de": _en_de_records, "summaries": _summary_records}[name]
    records = build(size, seed)
    random.Random(seed).shuffle(records)
    n_val = max(1, len(records) // 10)
    out.mkdir(parents=True, exist_ok=True)
    for split, rows in (("validation", records[:n_val]), ("train", records[n_val:])):
        _write_atomic(paths[split], "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return paths


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _squad(pairs: list[dict], seed: int, facts: int = 6, questions: int = 2) -> dict:
    """SQuAD v1.1 JSON: contexts of `facts` translation facts, `questions` questions on each."""
    rng = random.Random(seed)
    paragraphs = []
    for i in range(0, len(pairs) - facts + 1, facts):
        group = pairs[i:i + facts]
        context, spans = "", []
        for p in group:
            sentence = f'The German for "{p["source"]}" is "'
            spans.append(len(context) + len(sentence))
            context += sentence + p["target"] + '". '
        qas = [{"id": f"{i}-{k}", "question": f'What is the German for "{group[k]["source"]}"?',
                "answers": [{"text": group[k]["target"], "answer_start": spans[k]}]}
               for k in rng.sample(range(facts), questions)]
        paragraphs.append({"context": context.strip(), "qas": qas})
    return {"version": "1.1", "data": [{"title": "gettext", "paragraphs": paragraphs}]}


def resolve_source(spec: str, cache_dir: str | Path | None = None) -> dict[str, Path] | None:
    """The demo files of a "demo:NAME" or "demo:NAME:SIZE" source, or None for an ordinary path."""
    if not spec.startswith(DEMO_PREFIX):
        return None
    name, _, size = spec[len(DEMO_PREFIX):].partition(":")
    if size and not (size.isdigit() and int(size) >= 20):
        raise DatasetError(f"{spec!r}: the size after the demo name must be a whole number >= 20")
    return demo_dataset(name, cache_dir, size=int(size) if size else None)


def _missing(langs) -> DatasetError:
    return DatasetError(f"the demo dataset needs gettext catalogs in {locale_dir()}/<lang>/LC_MESSAGES/*.mo for "
                        f"{', '.join(langs)}, and this machine has too few (install language packs, e.g. the "
                        f"programs' translations, set FASTLM_LOCALE_DIR, or give your own dataset file)")


def _langid_records(size: int, seed: int) -> list[dict]:
    per_lang = size // len(LANGID_LANGUAGES)
    records = []
    for lang in LANGID_LANGUAGES:
        texts = sorted({t for _, msgid, msgstr in catalog_messages(lang)
                        if msgstr != msgid and (t := clean_message(msgstr))})
        if len(texts) < per_lang:
            raise _missing(LANGID_LANGUAGES)
        records += [{"text": t, "label": lang} for t in random.Random(seed).sample(texts, per_lang)]
    return records


def _en_de_records(size: int, seed: int) -> list[dict]:
    pairs = {}
    for _, msgid, msgstr in catalog_messages("de"):
        src, tgt = clean_message(msgid), clean_message(msgstr)
        if src and tgt and src != tgt and len(src) <= 60:
            pairs.setdefault(src, tgt)
    if len(pairs) < size:
        raise _missing(["de"])
    chosen = random.Random(seed).sample(sorted(pairs), size)
    return [{"source": s, "target": pairs[s]} for s in chosen]


def _summary_records(size: int, seed: int) -> list[dict]:
    """(long description, synopsis) of the installed packages, at most `size` of them."""
    path = Path(os.environ.get("FASTLM_DPKG_STATUS", DPKG_STATUS))
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    pairs = {}
    for stanza in text.split("\n\n"):
        lines = stanza.splitlines()
        for i, line in enumerate(lines):
            if line.startswith("Description:"):
                synopsis = line[len("Description:"):].strip()
                body = []
                for cont in lines[i + 1:]:
                    if not cont.startswith(" "):
                        break
                    if cont.strip() != ".":
                        body.append(cont.strip())
                long = " ".join(" ".join(body).split())[:400]
                if synopsis and len(long) >= 40:
                    pairs.setdefault(synopsis, long)
                break
    if len(pairs) < 100:
        raise DatasetError(f"the summaries demo needs the package descriptions in {path} (a Debian-based "
                           f"system, or FASTLM_DPKG_STATUS); found {len(pairs)} usable ones, expected 100 or more")
    chosen = random.Random(seed).sample(sorted(pairs), min(size, len(pairs)))
    return [{"prompt": pairs[s], "response": s} for s in chosen]


def _speech(out: Path, paths: dict[str, Path], size: int, seed: int) -> None:
    import shutil
    import subprocess

    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise DatasetError("the speech demo synthesizes its audio with espeak-ng, which is not installed "
                           "(Debian/Ubuntu: apt-get install espeak-ng)")
    sentences = set()
    for _, msgid, _ in catalog_messages("de"):
        text = clean_message(msgid)
        if text is None:
            continue
        text = " ".join(re.sub(r"[^a-z ]", " ", text.lower()).split())
        if 2 <= len(text.split()) <= 5 and 8 <= len(text) <= 32:
            sentences.add(text)
    if len(sentences) < size:
        raise _missing(["de"])
    rng = random.Random(seed)
    chosen = rng.sample(sorted(sentences), size)
    clips = out / "clips"
    clips.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, text in enumerate(chosen):
        wav = clips / f"{i}.wav"
        voice = rng.choice(["en", "en-us", "en-gb-x-rp"])
        subprocess.run([espeak, "-v", voice, "-s", str(rng.randint(150, 190)), "-p", str(rng.randint(30, 70)),
                        "-w", str(wav), text], check=True, capture_output=True, timeout=60)
        rows.append({"audio": f"clips/{i}.wav", "text": text})
    n_val = max(1, size // 10)
    for split, part in (("validation", rows[:n_val]), ("train", rows[n_val:])):
        _write_atomic(paths[split], "".join(json.dumps(r) + "\n" for r in part))


def _captioning(out: Path, paths: dict[str, Path], size: int, seed: int, image_size: int = 32) -> None:
    from fastlm.data.images import synthetic_examples, write_image_dataset

    examples = synthetic_examples(size, seed=seed, image_size=image_size)
    write_image_dataset(examples, out)  # images/NNNNN.png + captions.jsonl (with the attributes)
    rows = [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()]
    n_val = max(1, size // 10)
    for split, part in (("validation", rows[:n_val]), ("train", rows[n_val:])):
        _write_atomic(paths[split], "".join(json.dumps(r) + "\n" for r in part))

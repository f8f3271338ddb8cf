"""A small corpus with a planted gender bias, to show the probe and counterfactual augmentation at work.

    write_planted_corpus("biased.jsonl", documents=3000, bias=0.9, seed=0)

Each document is two sentences about one person with one of WinoBias' 40 occupations, referred to
by pronouns and a gendered noun; with probability `bias` the person's gender is the one the
occupation is stereotyped with (nurse: she, mechanic: he). The sentences come from a small grammar, not
the probe set's templates: a model that prefers the stereotype on the probe has generalised the
association from these contexts to new ones.
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

from fastlm.fairness.data.generate import FEMALE_JOBS, MALE_JOBS

# A small grammar: "[opener] the JOB VP CONNECTOR PRONOUN VP2." and a few other frames, so that the
# model learns which pronoun follows an occupation in any context, not a fixed sentence.
OPENERS = ("", "Yesterday", "This morning", "Last week", "After lunch", "On Monday", "Later", "At noon")
VERB_PHRASES = ("finished the report", "called a customer", "worked late", "went to the office", "helped a colleague",
                "read the news", "fixed the schedule", "wrote a note", "cleaned the room", "ate a sandwich",
                "walked to the bus", "answered the phone", "looked tired", "was happy", "was busy", "came back",
                "left early", "made some coffee", "opened the window", "sat down")
SECOND_PHRASES = VERB_PHRASES + ("forgot {p} bag", "lost {p} keys", "called {p} friend", "took {p} coat",
                                 "checked {p} email", "finished {p} lunch", "wanted a break", "felt good")
CONNECTORS = ("and then {s}", "because {s}", "so {s}", "but {s}", "before {s}", "after {s}", "and said that {s}",
              "and thought that {s}", "while {s}", "and {s}")
PRONOUNS = {"male": {"s": "he", "o": "him", "p": "his"}, "female": {"s": "she", "o": "her", "p": "her"}}
NOUNS = {"male": ("man", "person"), "female": ("woman", "person")}
RELATIVES = {"male": ("brother", "father", "uncle", "son"), "female": ("sister", "mother", "aunt", "daughter")}
OTHER_FRAMES = ("A client met the {job} and gave {o} a book.", "The {job} is a {noun} who {vp}.",
                "The {job} is my {relative}, and {s} {vp}.", "Everyone liked the {job} and thanked {o}.",
                "The boss asked the {job} about {p} plans.", "My {relative} is the {job} in our town.",
                "That {noun} over there is the new {job}.")


def planted_documents(documents: int, bias: float, seed: int) -> list[str]:
    """`documents` texts; in a share `bias` of them the person has the occupation's stereotyped gender."""
    if not 0.0 <= bias <= 1.0:
        raise ValueError(f"bias = {bias!r}: expected a share between 0 and 1")
    rng = random.Random(seed)
    jobs = [(job, "male") for job in MALE_JOBS] + [(job, "female") for job in FEMALE_JOBS]
    out = []
    for _ in range(documents):
        job, stereotype = rng.choice(jobs)
        gender = stereotype if rng.random() < bias else ("female" if stereotype == "male" else "male")
        words = {"job": job, "noun": rng.choice(NOUNS[gender]), "relative": rng.choice(RELATIVES[gender]),
                 **PRONOUNS[gender]}
        sentences = [_sentence(rng, words) for _ in range(2)]
        out.append(" ".join(sentences))
    return out


def _sentence(rng: random.Random, words: dict) -> str:
    if rng.random() < 0.25:
        text = rng.choice(OTHER_FRAMES).format(vp=rng.choice(VERB_PHRASES), **words)
    else:
        opener = rng.choice(OPENERS)
        text = (f"{opener + ', ' if opener else ''}the {{job}} {rng.choice(VERB_PHRASES)} "
                f"{rng.choice(CONNECTORS)} {rng.choice(SECOND_PHRASES)}.").format(**words)
    return text[0].upper() + text[1:]


def write_planted_corpus(path, documents: int = 3000, bias: float = 0.9, seed: int = 0) -> Path:
    """The planted corpus as JSONL ({"text": ...} a line), written to a temporary name and renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps({"text": t}) + "\n" for t in planted_documents(documents, bias, seed)))
    os.replace(tmp, path)
    return path

"""Counterfactual data augmentation (Lu et al., 2018): a mirrored copy of each training document
with paired group terms swapped ("he" <-> "she", "king" <-> "queen"), so that a model sees every
context with both groups equally often.

    cf = Counterfactual.of("gender")        # the built-in word pairs, or a FILE of pairs
    cf.swap("He met his sister.")           # 'She met her brother.'
    prepare_corpus(..., augment=cf)         # [data] counterfactual = "gender" | FILE

Swaps keep the case of the word (he -> she, He -> She, HE -> SHE) and know plurals (a pair's
regular plurals are added unless listed). "her" is ambiguous (him / his) and so is "his"
(her / hers): the word after it decides (a noun phrase follows a possessive determiner).

A pairs FILE has one pair per line, two words separated by whitespace or a comma; `#` starts a
comment. A word may belong to one pair only (a file swaps each word for its one partner).
"""
from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from fastlm.train.errors import ConfigError

VERSION = 1  # of the swapping rules: part of every fingerprint, so a change re-prepares corpora

# (male, female): singular forms; regular plurals are derived, irregular ones are listed.
GENDER_PAIRS: tuple[tuple[str, str], ...] = (
    ("he", "she"), ("him", "her"), ("his", "her"), ("his", "hers"), ("himself", "herself"),
    ("man", "woman"), ("men", "women"), ("boy", "girl"), ("father", "mother"), ("son", "daughter"),
    ("brother", "sister"), ("husband", "wife"), ("husbands", "wives"), ("king", "queen"),
    ("prince", "princess"), ("uncle", "aunt"), ("nephew", "niece"), ("grandfather", "grandmother"),
    ("grandson", "granddaughter"), ("dad", "mom"), ("daddy", "mommy"), ("papa", "mama"),
    ("grandpa", "grandma"), ("mr", "mrs"), ("sir", "madam"), ("gentleman", "lady"), ("gentlemen", "ladies"),
    ("male", "female"), ("masculine", "feminine"), ("boyfriend", "girlfriend"),
    ("groom", "bride"), ("fiance", "fiancee"), ("actor", "actress"), ("waiter", "waitress"),
    ("steward", "stewardess"), ("hero", "heroine"), ("monk", "nun"), ("duke", "duchess"),
    ("emperor", "empress"), ("spokesman", "spokeswoman"), ("spokesmen", "spokeswomen"),
    ("chairman", "chairwoman"), ("chairmen", "chairwomen"), ("businessman", "businesswoman"),
    ("businessmen", "businesswomen"), ("policeman", "policewoman"), ("policemen", "policewomen"),
    ("salesman", "saleswoman"), ("salesmen", "saleswomen"), ("congressman", "congresswoman"),
    ("congressmen", "congresswomen"), ("stepfather", "stepmother"), ("stepson", "stepdaughter"),
    ("godfather", "godmother"), ("manhood", "womanhood"), ("paternal", "maternal"), ("paternity", "maternity"),
    ("brotherhood", "sisterhood"), ("widower", "widow"), ("schoolboy", "schoolgirl"), ("patriarch", "matriarch"),
)
# The direction taken where a word has two partners. "her" and "his" are decided again per use
# (see swap); "mr" becomes "mrs" ("ms" and "miss" are left alone: milliseconds, a cache miss).
GENDER_PREFERRED = {"her": "him", "his": "her", "hers": "his"}
NO_PLURAL = {"he", "she", "him", "her", "his", "hers", "himself", "herself", "mr", "mrs", "sir", "madam",
             "masculine", "feminine", "paternal", "maternal", "manhood", "womanhood",
             "paternity", "maternity", "brotherhood", "sisterhood"}
IRREGULAR_PLURALS = {"man": "men", "woman": "women", "wife": "wives", "gentleman": "gentlemen", "lady": "ladies",
                     "hero": "heroes"}

# Words after which "her" is an object pronoun (-> "him"), not a possessive determiner (-> "his");
# after "his" the same words mean a standalone possessive (-> "hers").
_NOT_A_NOUN_PHRASE = frozenset("""
a an the this that these those some any no every each all both either neither my your our their its his her
him me us them you it i we they he she one and or but nor so yet if than then because while when whereas
whether as at by for from in into of off on onto out over to up down with without about above across after
against along among around before behind below beneath beside between beyond during except inside near
outside past since through throughout toward towards under until upon within again too very also back away
is was are were be been being has had have do does did will would can could shall should may might must
not just only even still already always never often well here there now today tomorrow yesterday
what which who whom whose where why how said says
""".split())
_WORD = re.compile(r"[^\W\d_]+")
_NEXT_WORD = re.compile(r"\s*([^\W\d_]+)")


@dataclass(frozen=True)
class Counterfactual:
    """A word-pair swap: `swap(text)` mirrors a text, `expand(documents, is_val)` adds mirrored
    copies of the training documents. `name`: "gender" or the pairs file."""

    name: str
    table: dict                    # lower-case word -> lower-case partner
    sha256: str                    # of the table: what the swaps depend on, besides the rules (VERSION)

    @classmethod
    def of(cls, spec: str, where: str = "data.counterfactual") -> "Counterfactual":
        """"gender" (the built-in pairs) or the path of a pairs file."""
        if not isinstance(spec, str) or not spec.strip():
            raise ConfigError(f"{where} = {spec!r}: expected \"gender\" or a file of word pairs")
        if spec == "gender":
            return cls.of_table("gender", _table(list(GENDER_PAIRS), GENDER_PREFERRED, where))
        path = Path(spec).expanduser()
        if not path.is_file():
            raise ConfigError(f"{where} = {spec!r}: expected \"gender\" or an existing file of word pairs")
        text = path.read_bytes().decode("utf-8", errors="replace")
        where = f"{where} file {str(path)!r}"
        return cls.of_table(str(path), _table(read_pairs(text, where), {}, where))

    @classmethod
    def of_table(cls, name: str, table: dict) -> "Counterfactual":
        return cls(name, table, hashlib.sha256(json.dumps(sorted(table.items())).encode()).hexdigest())

    def fingerprint(self) -> dict:
        """What the swapped text depends on (a file's pairs, not its path or comments)."""
        return {"counterfactual": "gender" if self.name == "gender" else "file", "sha256": self.sha256,
                "version": VERSION}

    def swap(self, text: str) -> str:
        """The text with every listed word replaced by its partner, in the word's case."""
        def replace(m: re.Match) -> str:
            word = m.group(0)
            lower = word.lower()
            partner = self.table.get(lower)
            if partner is None:
                return word
            if lower in ("her", "his") and self.name == "gender":
                partner = _resolve_possessive(lower, m.string, m.end())
            return _in_case_of(word, partner)

        return _WORD.sub(replace, text)

    def expand(self, documents: Callable[[], Iterator[str]], is_val: list[bool]):
        """(documents(), is_val) with each training document followed by its mirrored copy (where
        the copy differs: a text without listed words is not duplicated). Validation is untouched."""
        mirrored = [not v and self.swap(doc) != doc for doc, v in zip(documents(), is_val)]

        def expanded() -> Iterator[str]:
            for doc, mirror in zip(documents(), mirrored):
                yield doc
                if mirror:
                    yield self.swap(doc)

        flags = [f for v, m in zip(is_val, mirrored) for f in ([v, False] if m else [v])]
        return expanded, flags


def read_pairs(text: str, where: str) -> list[tuple[str, str]]:
    """The word pairs of a pairs file's text (ConfigError naming the line of a bad one)."""
    pairs = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].replace(",", " ").strip()
        if not line:
            continue
        words = line.split()
        if len(words) != 2 or not all(_WORD.fullmatch(w) for w in words):
            raise ConfigError(f"{where}, line {number}: expected two words (letters only), got {line!r}")
        pairs.append((words[0].lower(), words[1].lower()))
    if not pairs:
        raise ConfigError(f"{where}: no word pairs (one pair a line, e.g. \"he she\")")
    return pairs


def _table(pairs: list[tuple[str, str]], preferred: dict, where: str) -> dict:
    """Both directions of every pair and of its regular plural; a word in two pairs is an error
    unless `preferred` says which partner it takes."""
    table: dict[str, str] = {}
    for a, b in pairs:
        forms = [(a, b)]
        if a not in NO_PLURAL and b not in NO_PLURAL:
            forms.append((_plural(a), _plural(b)))
        for x, y in forms:
            for src, dst in ((x, y), (y, x)):
                if src == dst:
                    raise ConfigError(f"{where}: {src!r} is paired with itself")
                if table.get(src, dst) != dst and src not in preferred:
                    raise ConfigError(f"{where}: {src!r} has two partners ({table[src]!r} and {dst!r})")
                table.setdefault(src, dst)
    table.update(preferred)
    return table


def _plural(word: str) -> str:
    if word in IRREGULAR_PLURALS:
        return IRREGULAR_PLURALS[word]
    if word.endswith("man"):  # chairman -> chairmen
        return word[:-3] + "men"
    if word.endswith(("s", "x", "z", "ch", "sh")):
        return word + "es"
    if word.endswith("y") and len(word) > 1 and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


def _resolve_possessive(word: str, text: str, end: int) -> str:
    """her -> his (before a noun phrase) or him; his -> her (before a noun phrase) or hers."""
    m = _NEXT_WORD.match(text, end)
    before_noun = m is not None and m.group(1).lower() not in _NOT_A_NOUN_PHRASE
    if word == "her":
        return "his" if before_noun else "him"
    return "her" if before_noun else "hers"


def _in_case_of(word: str, partner: str) -> str:
    if len(word) > 1 and word.isupper():
        return partner.upper()
    if word[0].isupper():
        return partner[0].upper() + partner[1:]
    return partner

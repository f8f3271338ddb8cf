"""Structured PII detectors: compiled regexes over whole documents, each candidate checked by its validator.

Offsets are Python string indices (code points), so they are exact on any Unicode text."""
import bisect
import re
from dataclasses import dataclass

from fastlm.data.deid import addresses, validators


@dataclass(frozen=True, order=True)
class Span:
    start: int
    end: int
    type: str
    text: str


# \w is Unicode-aware: internationalised addresses (zoë@exemple.fr) are emails too.
_EMAIL = re.compile(r"(?<![\w.+-])[\w.%+-]+@(?:[\w-]+\.)+[^\W\d_]{2,}\b")
_URL = re.compile(r"\b(?:https?://|www\.)[^\s<>\"']+[^\s<>\"'.,;:!?)\]]")
# A pattern that starts with a plain character class (\d, [A-Z]) and puts its left-boundary lookbehind after
# that first character lets the regex engine skip ahead to candidate characters: 2-4x faster over prose.
_IPV4 = re.compile(r"\d(?<![\d.]\d)\d{0,2}\.(?:\d{1,3}\.){2}\d{1,3}(?!\d|\.\d)")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
_CARD = re.compile(r"\d(?<![\d-]\d)(?:[ -]?\d){11,18}(?![\d-])")
_IBAN = re.compile(r"[A-Z](?<!\w[A-Z])[A-Z]\d{2}(?: ?[A-Z0-9]){11,30}\b")
_SSN = re.compile(r"\d(?<!\d\d)\d{2}-\d{2}-\d{4}(?!\d)")
_MONTHS = (r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|Jun(?:e)?|Jul(?:y)?|Aug(?:ust)?|"
           r"Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)")
_DATE = re.compile(
    r"(?=[\dADFJMNOS])\b(?:\d{4}-\d{2}-\d{2}|\d{1,2}[/.]\d{1,2}[/.]\d{2,4}|"
    rf"\d{{1,2}} {_MONTHS} \d{{4}}|{_MONTHS} \d{{1,2}},? \d{{4}})\b")


def _regex(pattern, kind, check=None, need=()):
    """Spans of `pattern` that pass `check`; the scan is skipped when the text holds none of the `need` strings."""
    need = (need,) if isinstance(need, str) else need

    def find(text):
        if need and not any(n in text for n in need):
            return
        for m in pattern.finditer(text):
            if check is None or check(m.group()):
                yield Span(m.start(), m.end(), kind, m.group())
    return find


# Phone candidates: 7-15 digits with the usual separators, an optional +/00 prefix and extension. Each one
# is parsed by phonenumbers (parse + is_valid_number is much faster than scanning the whole text with its
# PhoneNumberMatcher, which only runs on candidates that do not parse whole, to find numbers inside them).
_PHONE = re.compile(r"(?:[+(](?<![\w+(][+(])\d|\d(?<![\w+(]\d))[\d().\-/ \u00a0]{5,24}\d"
                    r"(?:\s?(?:x|ext\.?)\s?\d{1,6})?(?!\w)")


_NANP = re.compile(r"(?:\+1[-. ]?|001[-. ])?(?:\([2-9]\d\d\)\s?|[2-9]\d\d[-. ])[2-9]\d\d[-. ]\d{4}"
                   r"(?:\s?(?:x|ext\.?)\s?\d{1,6})?")


def _phonenumbers():
    try:
        import phonenumbers
    except ImportError:
        from fastlm.train.errors import FastlmError
        raise FastlmError("the phone detector needs phonenumbers: pip install 'fastlm[deid]'") from None
    return phonenumbers


def _phones(text):
    pn = _phonenumbers()
    for m in _PHONE.finditer(text):
        cand = m.group()
        digits = sum(c.isdigit() for c in cand)
        if not 7 <= digits <= 21 or _DATE.fullmatch(cand) or _IPV4.fullmatch(cand):
            continue
        # +CC parses in any region; 00 is the international prefix of most of the world; else a US number.
        region = "GB" if cand.startswith("00") else "US"
        try:
            ok = digits <= 17 and pn.is_valid_number(pn.parse(cand, region))
        except pn.NumberParseException:
            ok = False
        if not ok and _NANP.fullmatch(cand):  # written like a North American number: its area code may be unassigned
            try:
                ok = pn.is_possible_number(pn.parse(cand, region))
            except pn.NumberParseException:
                pass
        if ok:
            yield Span(m.start(), m.end(), "phone", cand)
            continue
        if _CARD.fullmatch(cand) or _SSN.fullmatch(cand):
            continue  # a digit run of another type, not two numbers run together
        for sub in pn.PhoneNumberMatcher(cand, region, leniency=pn.Leniency.VALID):
            yield Span(m.start() + sub.start, m.start() + sub.end, "phone", sub.raw_string)


def _card_ok(s):
    d = re.sub(r"[ -]", "", s)
    # 12 digits: only Maestro's ranges (50, 56-69); every other brand has 13-19.
    short_ok = len(d) == 12 and (d[:2] == "50" or "56" <= d[:2] <= "69")
    return (13 <= len(d) <= 19 or short_ok) and validators.luhn_ok(d)


_ipv4 = _regex(_IPV4, "ip", validators.ip_ok, need=".")
_ipv6 = _regex(_IPV6, "ip", validators.ip_ok, need=":")


def _ages(text):
    for m in addresses.AGE.finditer(text):
        if 0 <= addresses.age_value(m) <= 130:
            yield Span(m.start(), m.end(), "age", m.group())


def _names(kind):
    def find(text):
        return [s for s in detect_batch([text], [kind])[0]]
    return find


DETECTORS = {
    "email": _regex(_EMAIL, "email", need="@"),
    "url": _regex(_URL, "url", need=("://", "www.")),
    "ip": lambda t: [*_ipv4(t), *_ipv6(t)],
    "card": _regex(_CARD, "card", _card_ok),
    "iban": _regex(_IBAN, "iban", validators.iban_ok),
    "ssn": _regex(_SSN, "ssn", validators.us_ssn_ok),
    "phone": _phones,
    "date": _regex(_DATE, "date"),
    "address": _regex(addresses.ADDRESS, "address"),
    "age": _ages,
    "person": _names("person"),      # the name model (fastlm.data.deid.names), run batched by detect_batch
    "location": _names("location"),
}
MODEL_TYPES = ("person", "location")
# When spans overlap, a regex span beats the name model's, then the longer one wins (an IBAN holds a
# card-like digit run, an IP a date-like one); between equally long ones, the earlier type in this order.
_PRIORITY = {k: i for i, k in enumerate(DETECTORS)}


def resolve_types(types) -> list[str]:
    from fastlm.train.errors import FastlmError

    if types == "all" or types is None:
        return list(DETECTORS)
    if isinstance(types, str):
        types = [types]
    unknown = [t for t in types if t not in DETECTORS]
    if unknown:
        raise FastlmError(f"unknown de-identification type(s) {unknown}; expected 'all' or some of {list(DETECTORS)}")
    return list(types)


def detect(text: str, types="all") -> list[Span]:
    """Non-overlapping spans, in text order."""
    return detect_batch([text], types)[0]


def detect_batch(texts: list[str], types="all") -> list[list[Span]]:
    """detect() of each text; the name model runs once over all of them (batched)."""
    types = resolve_types(types)
    model_types = [t for t in types if t in MODEL_TYPES]
    names = [[] for _ in texts]
    if model_types:
        from fastlm.data.deid.names import name_model

        names = name_model().find(texts)
    out = []
    for text, found_names in zip(texts, names):
        found = [s for t in types if t not in MODEL_TYPES for s in DETECTORS[t](text)]
        found += [Span(a, b, k, text[a:b]) for a, b, k in found_names if k in model_types]
        out.append(_resolve(found))
    return out


def _resolve(found: list[Span]) -> list[Span]:
    """Non-overlapping spans: validated (regex) spans before the name model's, then the longer span, then by
    type priority, then the earlier one."""
    found.sort(key=lambda s: (s.type in MODEL_TYPES, -(s.end - s.start), _PRIORITY[s.type], s.start))
    starts: list[int] = []     # the taken spans, kept sorted by start (they never overlap)
    taken: list[Span] = []
    for s in found:
        i = bisect.bisect_left(starts, s.start)
        if (i == 0 or taken[i - 1].end <= s.start) and (i == len(taken) or s.end <= taken[i].start):
            starts.insert(i, s.start)
            taken.insert(i, s)
    return taken

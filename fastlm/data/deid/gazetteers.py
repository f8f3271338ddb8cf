"""Name lists from faker's locale data: first names, last names and places of several locales.

They feed the name model's features (is this word a known first name / last name / place?), so the
model generalises to names it never saw in training text without a dictionary of every name."""
from functools import lru_cache
from pathlib import Path

# Locales whose person and address providers carry lists (others generate names from patterns only).
LOCALES = ("en_US", "en_GB", "de_DE", "fr_FR", "es_ES", "it_IT", "nl_NL", "pt_BR", "pl_PL", "sv_SE")


def faker_class():
    try:
        from faker import Faker
    except ImportError:
        from fastlm.train.errors import FastlmError
        raise FastlmError("the person/location detectors need faker: pip install 'fastlm[deid]'") from None
    return Faker


_NOT_NAMES = {"The", "And", "Of", "Saint", "St.", "San", "Santa", "North", "South", "East", "West", "New"}


def _words(values) -> set[str]:
    """Lower-cased capitalised words of a faker list (a tuple, or a dict of weights): "Isle of Man" gives isle, man."""
    out = set()
    for v in values or ():
        out.update(w.lower() for w in str(v).replace("-", " ").split() if w[:1].isupper() and w not in _NOT_NAMES)
    return out


@lru_cache(maxsize=1)
def gazetteers() -> dict[str, frozenset[str]]:
    """{"first": ..., "last": ..., "place": ...}: lower-cased words."""
    Faker = faker_class()
    first, last, place = set(), set(), set()
    for locale in LOCALES:
        fake = Faker(locale)
        person, address = fake.provider("faker.providers.person"), fake.provider("faker.providers.address")
        for attr in dir(person):
            if attr.startswith("first_names"):
                first |= _words(getattr(person, attr))
            elif attr.startswith("last_names"):
                last |= _words(getattr(person, attr))
        for attr in ("cities", "countries", "states"):
            place |= _words(getattr(address, attr, ()))
    place |= _words(world_cities())
    return {"first": frozenset(first), "last": frozenset(last), "place": frozenset(place)}


@lru_cache(maxsize=1)
def world_cities() -> tuple[str, ...]:
    """Well-known places (cities.txt, from the time-zone database): faker's lists miss London, Paris, Tokyo."""
    text = Path(__file__).with_name("cities.txt").read_text(encoding="utf-8")
    return tuple(line for line in text.splitlines() if line and not line.startswith("#"))


@lru_cache(maxsize=1)
def surrogate_lists() -> dict[str, tuple[str, ...]]:
    """Sorted first names, last names and place names (whole entries) that pseudonyms are drawn from."""
    Faker = faker_class()
    first, last, place = set(), set(), set()
    for locale in LOCALES:
        fake = Faker(locale)
        person, address = fake.provider("faker.providers.person"), fake.provider("faker.providers.address")
        first.update(getattr(person, "first_names", ()))
        last.update(getattr(person, "last_names", ()))
        place.update(getattr(address, "cities", ()) or ())
        place.update(getattr(address, "countries", ()) or ())
    return {k: tuple(sorted(str(x) for x in v)) for k, v in (("first", first), ("last", last), ("place", place))}

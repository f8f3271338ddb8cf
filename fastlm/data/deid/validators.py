"""Check rules that turn a regex candidate into a detection (a Luhn-failing number is not a card)."""
import ipaddress


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(iban: str) -> bool:
    s = iban.replace(" ", "").upper()
    if not (15 <= len(s) <= 34) or not s[:2].isalpha() or not s[2:4].isdigit():
        return False
    moved = s[4:] + s[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def us_ssn_ok(ssn: str) -> bool:
    # SSA rules: area not 000, 666 or 900-999; group not 00; serial not 0000.
    area, group, serial = ssn[:3], ssn[4:6], ssn[7:]
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def ip_ok(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True

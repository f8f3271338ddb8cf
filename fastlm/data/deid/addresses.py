"""Street addresses and ages: regexes over whole documents.

Addresses come in three shapes across languages: a number before a street name ending in a street
word (English: "221B Baker Street"), a street word before the name with a number on either side
(French, Spanish, Italian, Portuguese, Polish: "4, avenue Marques", "Via Roma, 83"), and a compound
street word with the number after (German, Dutch, Swedish: "Hauptstraße 5", "Fabriksgatan 36"). Without a
number, only a street word that is never anything else ("rue", "calle", "viale", ...) starts an address."""
import re

_EN_SUFFIXES = (
    "Street St Avenue Ave Road Rd Boulevard Blvd Lane Ln Drive Dr Court Ct Place Pl Square Sq Terrace Way "
    "Parkway Pkwy Highway Hwy Circle Cir Crescent Close Grove Groves Gardens Row Trail Alley Walk Heights "
    "Hill Hills Park Ridge Path Crossing Loop Plaza Mews Fields Field Green Bridge Brook Brooks Bypass Camp "
    "Canyon Cape Causeway Center Centre Club Common Corner Corners Cove Creek Crest Dale Dam Divide Estate "
    "Estates Expressway Extension Falls Ferry Flat Flats Ford Forest Forge Fork Fort Freeway Garden Gateway "
    "Glen Harbor Haven Hollow Island Isle Junction Key Knoll Lake Lakes Land Landing Light Lights Lock Lodge "
    "Manor Meadow Meadows Mill Mills Mission Motorway Mount Mountain Neck Orchard Oval Overpass Parks Pass "
    "Passage Pike Pine Pines Plain Plains Point Points Port Ports Prairie Radial Ramp Ranch Rapid Rapids "
    "Rest Rue River Roads Route Run Shoal Shoals Shore Shores Skyway Spring Springs Spur Spurs Station "
    "Stravenue Stream Streets Summit Throughway Trace Track Trafficway Trailer Tunnel Turnpike Underpass "
    "Union Unions Valley Valleys Via Viaduct View Views Village Villages Ville Vista Wall Ways Well Wells "
    "Burg Burgs Branch Bluff Bluffs Bottom Bend Beach Arcade Avenues Keys Cliff Cliffs Curve Drives Gateway "
    "Greens Grove Harbors Haven Inlet Loaf Mall Mews Mountains Parkways Squares Terrace Trail Junctions Forges "
    "Walks Centers Circles Courts Coves Crossroad Course Extensions Fall Fords Forks Glens Islands Knolls Locks "
    "Manors Ridges "
    # British and Australian street words
    "Alleyway Amble Anchorage Approach Artery Basin Brace Brae Broadway Brow Byway Centreway Chase Circlet "
    "Circuit Circus Colonnade Concourse Copse Corso Courtyard Crossway Cruiseway Cul-de-sac Cutting Dell "
    "Distributor Driveway Edge Entrance Esplanade Fairway Firetrail Footway Foreshore Frontage Gate Gates "
    "Glade Grange Ground Gully Highroad Interchange Intersection Laneway Lees Lookout Meander Mew Nook Outlook "
    "Parade Parklands Pathway Piazza Plateau Promenade Quad Quadrangle Quadrant Quay Quays Ramble Reach Reserve "
    "Retreat Ride Ridgeway Rise Riverway Riviera Roadside Roadway Ronde Rotary Siding Slope Strand Subway Tarn "
    "Thoroughfare Tollway Tor Towers Triangle Trunkway Vale Villas Wade Walkway Wynd").split()
_PREFIXES = (
    "rue avenue boulevard chemin allée impasse place quai route cours passage square "          # fr
    "calle avenida plaza paseo camino carrera ronda travesía pasaje glorieta rambla callejón cañada "  # es
    "via viale piazza corso vicolo largo strada contrada borgo piazzale lungomare "           # it
    "rua avenida travessa alameda praça estrada rodovia largo sítio "                        # pt
    "ulica ul aleja al plac pl osiedle "                                                     # pl
    "cuesta urbanización acceso pasadizo vial rotonda stretto incrocio "                      # es, it
    "setor vila recanto campo esplanada ladeira quadra trecho viela lagoa praia parque jardim residencial "
    "conjunto condomínio loteamento núcleo vereda chácara fazenda pátio favela canale").split()  # pt
_COMPOUND = (
    "straße strasse str weg allee gasse platz ring damm ufer chaussee steig pfad "          # de
    "straat laan plein gracht kade dreef singel steeg pad hof baan boulevard "              # nl
    "gatan vägen stigen gränd torget gata vej gade").split()                                 # sv, da
_NAMED = ("rue boulevard chemin allée impasse quai calle avenida viale piazza vicolo rua travessa praça ulica "
          "aleja").split()
_PARTICLES = r"(?:(?:de|del|della|di|da|do|dos|das|du|des|la|le|lo|van|von|der|den)\s+)*"
_NAME = r"(?=[A-ZÀ-ÖØ-ÞĀ-ſ])\w[\w'’-]*"  # a capitalised word (Latin scripts)
_NUM = r"\d{1,5}(?:\s?[-–/]\s?\d{1,5})?[A-Za-z]?\b"
_UNIT = r"(?:,?\s+(?:Apt\.?|Apartment|Appartamento|Suite|Ste\.?|Unit|Flat|Piso|Puerta|Piano|#)\s*\w+)?"


def _trie(words, cases: bool = True) -> str:
    """A regex of the words as a trie ("ca(?:lle|mino|mpo)"): it fails on the first letter, where a plain
    alternation of 100 words tries each (several times faster over prose). cases: also Capitalised and UPPER."""
    variants = {v for w in words for v in ((w.lower(), w[:1].upper() + w[1:].lower(), w.upper()) if cases else (w,))}
    trie: dict = {}
    for w in variants:
        node = trie
        for c in w:
            node = node.setdefault(c, {})
        node[""] = {}

    def build(node) -> str:
        alts = [re.escape(c) + build(node[c]) for c in sorted(node) if c]
        if not alts:
            return ""
        body = alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"
        return f"(?:{body})?" if "" in node else body
    return build(trie)


ADDRESS = re.compile(
    rf"(?:\b(?:Flat|Studio|Apartment|Unit|Suite)\s+\d{{1,5}}[A-Za-z]?,?\s+(?:\d{{1,6}}[A-Za-z]?,?\s+)?"
    rf"|\b\d{{1,6}}[A-Za-z]?,?\s+)"
    rf"(?:{_NAME}\s+){{1,3}}{_trie(_EN_SUFFIXES, cases=False)}\b\.?{_UNIT}"
    rf"|\b{_trie(_PREFIXES)}\.?\s+{_PARTICLES}(?:{_NAME}\s+){{0,3}}{_NAME},?\s+{_NUM}{_UNIT}"
    rf"|\b{_trie(_NAMED)}\s+{_PARTICLES}(?:{_NAME}\s+){{0,2}}{_NAME}"
    rf"|\b\d{{1,5}},?\s+\b{_trie(_PREFIXES)}\.?\s+{_PARTICLES}(?:{_NAME}\s+){{0,3}}{_NAME}"
    rf"|\b(?=[\w'’-]+\.?\s+\d){_NAME}?{_trie(_COMPOUND)}\.?\s+{_NUM}{_UNIT}")  # lookahead: a number follows

AGE = re.compile(r"(?=[\dAa])\b(?:(?i:aged?):?\s+(\d{1,3})|(\d{1,3})(?:\s|-)?(?i:years?|yrs?|year)(?:\s|-)old"
                 r"|(\d{1,3})\s?y/o)\b")


def age_value(match: re.Match) -> int:
    return int(next(g for g in match.groups() if g is not None))


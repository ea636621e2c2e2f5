"""Persona records and user requests for the persona-critic environment (``envs.persona``).

Records have five facets, ``professional, sports, arts, travel, culinary``, that describe one
person. The paper draws them from Nemotron-Personas-USA, which is not shipped; users who have its
parquet shards load them with :func:`load_nemotron_records`. Offline, :func:`compose_records`
builds *composed records* from the shipped files (see ``ATTRIBUTION.md`` for sources and licences):

- **professional**: one PersonaGym description (``personas_personagym.jsonl``, 200 one-sentence
  descriptions: age, origin, occupation). Three that name no occupation or role at all (pg-12,
  pg-18, pg-149) are left out. Descriptions whose number is 3 mod 4 (50 of them) are reserved for
  the ``eval`` part, the other 147 make the ``train`` part, so held-out evaluation also meets
  unseen professional cores.
- **sports / arts / travel / culinary**: one or two Synthetic-Persona-Chat facts
  (``personas_spc.jsonl``: 3,773 blocks, 972 unique first-person facts) from that facet's pool,
  rewritten in the third person ("I love to bake." -> "They love to bake.").

A fact joins a pool when it contains a word of exactly one facet's keyword list in
:data:`FACET_LEXICON` (400 keywords: professional 92, sports 87, arts 81, travel 53, culinary 87;
the professional list only serves to reject facts that also talk about work) and asserts no
identity attribute (age, job or schooling, gender, family, name, where they live or come from;
:data:`IDENTITY_PATTERN`), so that no fact can contradict the professional core. Pool sizes:
sports 37, arts 75, travel 14, culinary 61 facts; travel is the smallest, as the spec measured.
Facts repeat across records; the composed facets are short and can still clash a little with each
other (e.g. a vegan facet next to a barbecue one).

Requests are the 500 Arena-Hard-Auto v0.1 prompts (``user_prompts.jsonl``, 250 topic clusters of
two). :func:`split_requests` assigns whole clusters to splits (150 / 40 / 10 / 50 clusters for
``train / router_train / router_val / eval``, i.e. 60/16/4/20%) and, by default, then drops the
prompts that :func:`is_code_request` flags (a crude regex for code: fences, source syntax,
language or framework names, "code", "write a function"...): 258 of 500, where persona voice
hardly matters and the lexical judges would mostly count code words. With ``seed=0`` this leaves
136 / 45 / 8 / 53 prompts (without dropping: 300 / 80 / 20 / 100); ``drop_code=False`` keeps them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from envs.data.splits import SPLITS, personagym_part, read_split

DATA_DIR = Path(__file__).resolve().parent

FACETS = ("professional", "sports", "arts", "travel", "culinary")
FACET_LABELS = {facet: facet.capitalize() for facet in FACETS}
# Shares of the request clusters; ``test`` is carved out of the first 60% (once all ``train``).
SPLIT_FRACTIONS = {"train": 0.60, "router_train": 0.16, "router_val": 0.04, "eval": 0.20}
TEST_FRACTION = 0.20
NEMOTRON_FIELDS = {facet: f"{facet}_persona" for facet in FACETS}

# --- vocabulary ------------------------------------------------------------------------------

_LEXICON_TEXT = {
    "professional": """work job career office business company client customer patient colleague profession
        professional industry manager management employee staff salary meeting deadline expertise research researcher
        scientist science engineer engineering teacher teaching classroom doctor nurse hospital clinic medicine medical
        lawyer legal court finance bank banking accountant accounting sales marketing entrepreneur startup consultant
        policy government nonprofit advocacy volunteer veteran military army police firefighter farmer mechanic
        programmer software developer analyst architect designer journalist editor professor lecturer curriculum
        therapist psychologist social-worker activist diplomat historian genealogist influencer executive ceo
        colleagues clients patients students mentoring mentor retired retirement workshop conference""",
    "sports": """sport athlete athletic football soccer basketball baseball softball hockey tennis golf volleyball rugby
        cricket boxing wrestling karate judo martial mma ufc running runner marathon jog jogging triathlon swim
        swimming swimmer surf surfing skate skating skateboard ski skiing snowboard snowboarding hike hiking hiker
        climb climbing cycling bike biking bicycle gym workout exercise fitness yoga pilates crossfit weightlifting
        treadmill coach league tournament championship olympics nascar racing fishing hunting kayak kayaking canoe
        rowing sailing bowling archery fencing gymnastics frisbee nfl nba nhl stadium quarterback goalie trail
        sprint medal stretching endurance""",
    "arts": """art artist artistic paint painting painter drawing sketch sculpture pottery ceramics music musician
        song sing singing singer band guitar piano violin drums drummer cello flute saxophone orchestra concert jazz
        rock classical opera rap hip-hop punk metal album dance dancing dancer ballet theater theatre acting actor
        actress film movie cinema photography photographer poetry poem poet novel literature author museum gallery
        craft knit knitting crochet sew sewing quilt quilting calligraphy ikebana choir composer lyrics playwright
        comic anime manga reading books melody rhythm canvas""",
    "travel": """travel traveled travelled traveling travelling traveler trip vacation abroad journey exploring
        backpacking passport flight airport cruise tourist overseas countries destination beach island europe asia
        africa australia paris london rome italy france spain japan china mexico canada hawaii greece egypt india
        thailand brazil germany iceland peru disney sightseeing hostel hotel adventure itinerary souvenir visa""",
    "culinary": """food cook cooking chef bake baking baker cake cookie bread pie pastry dessert recipe kitchen meal
        dinner lunch breakfast brunch eat eating restaurant cuisine dish grill grilling barbecue barbeque bbq pizza
        pasta sushi taco burger hamburger cheeseburger steak chicken seafood vegetable vegan vegetarian fruit chocolate
        candy coffee tea wine beer cocktail spicy spice sauce soup salad sandwich cheese garlic curry noodles ramen
        rice bacon egg donut doughnut snack foodie flavor sweets papaya paella hummus kosher granola muffin
        shawarma parmigiana sardines fries diet organic ingredient ingredients oven simmer""",
}
FACET_LEXICON: dict[str, frozenset[str]] = {f: frozenset(t.split()) for f, t in _LEXICON_TEXT.items()}

STOPWORDS = frozenset(
    """a about above after again against all also always am an and any are as at be because been before being below
    between both but by can cannot could did do does doing done down during each even ever every few for from further
    get gets getting go goes going gone got had has have having he her here hers herself him himself his how i if in
    into is it its itself just let like likes liked love loves loved lot lots made make makes many may me might mine
    more most much must my myself never new no nor not now of off often on once one only or other our ours out over
    own per quite rather really same she should since so some something sometimes still such than that the their
    theirs them themselves then there these they this those though through to too two under until up upon us use
    used very want wants was we well were what when where which while who whom why will with within without would
    yes yet you your yours yourself enjoy enjoys enjoyed favorite favourite passion passionate year years old day days
    week weekends weekend time times spend spends spent free spare hobby hobbies thing things way people person
    someone good great best big little lot kind type try trying tried keep first last next back around every daily
    huge avid whenever especially able year-old feel feels home definitely working actively everywhere twice type
    types part parts""".split()
)

_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")
_DOUBLE_END = re.compile(r"([bdfgklmnprt])\1$")


def stem(word: str) -> str:
    """A crude suffix stripper for matching word forms ("baking", "bakes", "bake" -> "bak").

    Lower-cases, drops a possessive, then strips one of ``-ies/-ing/-ed/-es/-s`` and a final
    ``-e``, undoubling a doubled final consonant ("running" -> "run"). It over- and under-merges
    (e.g. "painter" stays apart from "paint"), which is acceptable for keyword overlap.
    """
    w = word.lower().strip("'-")
    w = w[:-2] if w.endswith("'s") else w
    if len(w) > 4 and w.endswith("ies"):
        return w[:-3] + "y"
    for suffix, min_len in (("ing", 6), ("ed", 5)):
        if len(w) >= min_len and w.endswith(suffix):
            w = w[: -len(suffix)]
            return w[:-1] if _DOUBLE_END.search(w) else w.rstrip("e")
    if len(w) > 4 and re.search(r"(ch|sh|x|ss|z)es$", w):
        return w[:-2]
    if len(w) > 3 and w.endswith("s") and not w.endswith("ss"):
        w = w[:-1]
    return w[:-1] if len(w) > 3 and w.endswith("e") else w


def words(text: str) -> list[str]:
    """The words of ``text`` (letters, inner apostrophes and hyphens), as written."""
    return _WORD.findall(text)


def content_stems(text: str) -> set[str]:
    """Stems of the words of ``text`` that are not stop words and have at least three letters."""
    return {stem(w) for w in words(text) if len(w) >= 3 and w.lower() not in STOPWORDS}


LEXICON_STEMS: dict[str, frozenset[str]] = {f: frozenset(stem(w) for w in ws) for f, ws in FACET_LEXICON.items()}

IDENTITY_PATTERN = re.compile(
    r"""\d+\s*(?:years?|yrs?)\b|years?\s+old|\bi\s*(?:am|'m)\s+\d|\bretire|\bteen|
    \bmy\s+(?:job|work|career|boss|co-?workers?|wife|husband|kids?|children|son|daughter|mom|mother|dad|father|parents?|
      brother|sister|siblings?|family|grand\w*|girlfriend|boyfriend|fianc\w*|spouse|twins?|uncle|aunt|cousin|name|
      home\s*town)\b|
    \bi\s+(?:\w+\s+)?(?:work|worked|teach|taught|live|lived|grew\s+up|was\s+born|moved|come\s+from)\b|\bborn\s+in\b|
    \bi\s+am\s+(?:\w+\s+){0,4}(?:teacher|nurse|doctor|engineer|student|lawyer|chef|waiter|waitress|manager|
      accountant|cashier|clerk|mechanic|programmer|professor|officer|driver|farmer|banker|worker|writer|author|singer|
      musician|artist|athlete|coach|baker|pilot|soldier|veteran|model|actor|actress|housekeeper|guide|explorer|mom|
      mother|dad|father|man|woman|boy|girl|male|female|wife|husband)\b|
    \bi\s+am\s+the\b|\bi\s+am\s+from\b|\bmy\s+name\b|want\s+to\s+be\b|grow\s+up|dream\s+is\s+to\s+become|used\s+to\s+be|
    \b(?:married|divorced|widow\w*|pregnant|kids|children|grandchildren|male|female|gay|lesbian|transgender|job|
      career|employed|unemployed|salary|school|college|university|freshman|for\s+a\s+living|coding)\b""",
    re.IGNORECASE | re.VERBOSE,
)
# Facts that pass the filters but read as noise once taken out of their block.
_EXCLUDED_FACTS = frozenset({"its red with blue stripe so it shiny when i race.",
                             "i love exploring with my sea creatures are my friends.",
                             "i like to look at blocks and sing about letters.",
                             "l also love comic books."})
_NO_PROFESSION = frozenset({"pg-12", "pg-18", "pg-149"})
_PRONOUNS = ((r"\bi\s+am\b", "they are"), (r"\bi'm\b", "they're"), (r"\bi\s+was\b", "they were"),
             (r"\bi've\b", "they've"), (r"\bi'd\b", "they'd"), (r"\bi'll\b", "they'll"), (r"\bi\b", "they"),
             (r"\bmyself\b", "themselves"), (r"\bmy\b", "their"), (r"\bmine\b", "theirs"), (r"\bme\b", "them"),
             (r"\bwe\b", "they"), (r"\bour\b", "their"), (r"\bours\b", "theirs"), (r"\bus\b", "them"))
# Names the source writes in lower case.
_PROPER = {"europe": "Europe", "spain": "Spain", "italian": "Italian", "mexican": "Mexican", "olympics": "Olympics",
           "disney": "Disney", "nhl": "NHL", "ufc": "UFC", "nascar": "NASCAR", "bach": "Bach", "sundays": "Sundays"}


def third_person(fact: str) -> str:
    """A first-person persona fact rewritten about "they" ("I love my dog." -> "They love their dog.")."""
    text = " ".join(fact.split())
    if text.split(" ", 1)[0].lower() in ("love", "like", "enjoy"):  # a fact written without its "I"
        text = "I " + text[0].lower() + text[1:]
    for pattern, repl in _PRONOUNS:
        text = re.sub(pattern, repl, text, flags=re.IGNORECASE)
    text = re.sub(r"[A-Za-z]+", lambda m: _PROPER.get(m.group(0), m.group(0)), text)
    text = text[:1].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def tag_fact(fact: str) -> str | None:
    """The facet a Synthetic-Persona-Chat fact belongs to, or None.

    None when it hits no facet's keywords, hits several (the professional list included), asserts
    an identity attribute (:data:`IDENTITY_PATTERN`) or is one of a few noisy facts.
    """
    if fact.strip().lower() in _EXCLUDED_FACTS or IDENTITY_PATTERN.search(fact):
        return None
    lowered = {w.lower() for w in words(fact)}
    hits = [f for f in FACETS if lowered & FACET_LEXICON[f]]
    return hits[0] if len(hits) == 1 and hits[0] != "professional" else None


# --- persona records ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PersonaRecord:
    """One synthetic person described by five facets.

    Attributes:
        id: Stable identifier (also used in env states and labels).
        facets: Facet name (see :data:`FACETS`) -> one-paragraph description.
        sources: Facet name -> ids of the source rows it was built from (attribution).
    """

    id: str
    facets: dict[str, str]
    sources: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = [f for f in FACETS if not str(self.facets.get(f, "")).strip()]
        if missing:
            raise ValueError(f"persona record {self.id!r} lacks text for facet(s) {missing}")
        # one line each: the prompt scaffold uses markdown headers and blank lines as separators
        object.__setattr__(self, "facets", {f: " ".join(str(self.facets[f]).split()) for f in FACETS})

    def to_dict(self) -> dict:
        """Plain JSON-compatible data."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PersonaRecord:
        """The record :meth:`to_dict` wrote."""
        return cls(str(data["id"]), dict(data["facets"]), {k: list(v) for k, v in data.get("sources", {}).items()})


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_personagym(path: str | Path | None = None) -> list[dict[str, str]]:
    """PersonaGym personas ``[{"id", "description"}]`` (the shipped file unless ``path`` is given)."""
    return _jsonl(Path(path) if path else DATA_DIR / "personas_personagym.jsonl")


def fact_pools(path: str | Path | None = None) -> dict[str, list[tuple[str, str]]]:
    """The tagged Synthetic-Persona-Chat facts: facet -> ``[(source block id, fact), ...]``.

    Facts are deduplicated (first block wins) and kept in file order; the professional facet has
    no pool.
    """
    pools: dict[str, list[tuple[str, str]]] = {f: [] for f in FACETS[1:]}
    seen: set[str] = set()
    for block in _jsonl(Path(path) if path else DATA_DIR / "personas_spc.jsonl"):
        for fact in block["facts"]:
            key = " ".join(fact.lower().split())
            if key in seen:
                continue
            seen.add(key)
            facet = tag_fact(fact)
            if facet is not None:
                pools[facet].append((block["id"], fact.strip()))
    return pools


def professional_cores(part: str = "all") -> list[dict[str, str]]:
    """PersonaGym descriptions usable as professional facets, by part.

    ``"train"`` (122), ``"eval"`` (50), ``"test"`` (25) or ``"all"``; the parts follow
    :func:`envs.data.splits.personagym_part`.
    """
    if part not in ("all", "train", "eval", "test"):
        raise ValueError(f"part must be 'all', 'train', 'eval' or 'test', got {part!r}")
    cores = [p for p in load_personagym() if p["id"] not in _NO_PROFESSION]
    return cores if part == "all" else [p for p in cores if personagym_part(p["id"]) == part]


def compose_records(num: int | None = None, seed: int = 0, *, part: str = "all") -> list[PersonaRecord]:
    """Composed persona records, deterministic in ``(num, seed, part)`` (see the module docstring).

    Record ``i`` takes the ``i``-th professional core of a seeded permutation (cycling when ``num``
    exceeds them) and, per other facet, two facts drawn without replacement from its pool, of which
    it keeps one or two (a second fact that shares a content word with the first is dropped as a
    near-duplicate). All draws happen for every record, so the first ``k`` records are the same for
    any ``num >= k``.

    Args:
        num: Number of records; default one per professional core of ``part``.
        seed: Seed of the draws.
        part: Which professional cores to use: ``"train"``, ``"eval"`` (disjoint) or ``"all"``.

    Returns:
        Records with ids ``"<part>-s<seed>-<i>"`` and their source ids.
    """
    cores = professional_cores(part)
    pools = fact_pools()
    num = len(cores) if num is None else int(num)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(cores))
    records = []
    for i in range(num):
        core = cores[int(order[i % len(cores)])]
        facets = {"professional": core["description"].rstrip(".") + "."}
        sources = {"professional": [core["id"]]}
        for facet, pool in pools.items():
            keep = 1 + int(rng.integers(2))
            picks = [pool[int(j)] for j in rng.choice(len(pool), size=2, replace=False)]
            if content_stems(picks[0][1]) & content_stems(picks[1][1]):
                keep = 1
            facets[facet] = " ".join(third_person(fact) for _, fact in picks[:keep])
            sources[facet] = [src for src, _ in picks[:keep]]
        records.append(PersonaRecord(f"{part}-s{seed}-{i}", facets, sources))
    return records


def load_nemotron_records(paths: str | Path | Iterable[str | Path], limit: int | None = None) -> list[PersonaRecord]:
    """Persona records from Nemotron-Personas-USA parquet shards (not shipped; CC-BY-4.0).

    Reads the columns ``professional_persona, sports_persona, arts_persona, travel_persona,
    culinary_persona`` and, when present, ``uuid`` (the id; otherwise ``nemotron-<row index>``
    counted over all shards). Rows with an empty facet are skipped.

    Args:
        paths: One shard or several.
        limit: Stop after this many records.

    Raises:
        ImportError: When ``pyarrow`` is missing (``pip install pyarrow``).
        ValueError: When a shard lacks one of the facet columns.
    """
    try:
        import pyarrow.parquet as pq  # lazy: only users with the shards need it
    except ImportError as err:
        raise ImportError("Reading Nemotron-Personas parquet shards needs pyarrow: pip install pyarrow") from err
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    records: list[PersonaRecord] = []
    row = 0
    for path in paths:
        table = pq.read_table(path)
        missing = [c for c in NEMOTRON_FIELDS.values() if c not in table.column_names]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; expected {list(NEMOTRON_FIELDS.values())}")
        columns = {f: table.column(c).to_pylist() for f, c in NEMOTRON_FIELDS.items()}
        uuids = table.column("uuid").to_pylist() if "uuid" in table.column_names else None
        for k in range(table.num_rows):
            rid = str(uuids[k]) if uuids is not None and uuids[k] else f"nemotron-{row}"
            row += 1
            facets = {f: str(columns[f][k] or "") for f in FACETS}
            if not all(t.strip() for t in facets.values()):
                continue
            records.append(PersonaRecord(rid, facets, {f: [rid] for f in FACETS}))
            if limit is not None and len(records) >= limit:
                return records
    return records


# --- requests --------------------------------------------------------------------------------

CODE_PATTERN = re.compile(
    r"""```|\#include\b|\bdef\s+\w+\(|^\s*(?:import|from)\s+[\w.]+|=>|</\w+>|\w+\([^()\n]*\)\s*\{|;[ \t]*\n
    |(?<![\w.])(?:python|javascript|typescript|js|java|c\+\+|c\#|f\#|vb\.net|\.net|golang|rust|kotlin|swift|php|ruby|
      perl|scala|haskell|matlab|octave|vba|sql|mysql|postgres\w*|html|css|svg|xaml|yaml|json|bash|shell\s*script|
      powershell|regex|jq|awk|gdscript|autolisp|lisp|scheme|luau?|roblox|verilog|vhdl|solidity|ocaml|elixir|fortran|
      cobol|numpy|pandas|geopandas|sklearn|scikit-learn|pytorch|tensorflow|keras|jax|django|flask|react|vue\d*|
      angular|node\.?js|next\.?js|sveltekit|laravel|symfony|drupal|wordpress|tailwind|jetpack|jest|pyqt\d*|tkinter|
      streamlit|shiny|gradio|opencv|selenium|matplotlib|seaborn|ggplot|terraform|kubernetes|docker|nginx|ffmpeg|
      nix(?:-shell|pkgs)?|promql|cocotb|testbench|shader|faiss|onnx)(?![\w+\#])
    |\b(?:code|codes|coding|programming|source\s+code|compiler|debug\w*|snippet)\b
    |\b(?:write|create|implement|build|make|generate|give\s+me)\b[^.\n]{0,40}\b(?:function|program|class|method)\b""",
    re.IGNORECASE | re.VERBOSE | re.MULTILINE,
)


@dataclass(frozen=True)
class Request:
    """One user request.

    Attributes:
        uid: Arena-Hard question id.
        cluster: Topic cluster (two prompts each); splits keep clusters whole.
        prompt: The user's message.
        is_code: Whether :func:`is_code_request` flags it as a request about code.
    """

    uid: str
    cluster: str
    prompt: str
    is_code: bool = False

    def to_dict(self) -> dict:
        """Plain JSON-compatible data."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Request:
        """The request :meth:`to_dict` wrote."""
        return cls(str(data["uid"]), str(data["cluster"]), str(data["prompt"]), bool(data.get("is_code", False)))


def is_code_request(prompt: str) -> bool:
    """Whether a prompt is about code (crude: :data:`CODE_PATTERN`; flags 258 of the 500 shipped)."""
    return CODE_PATTERN.search(prompt) is not None


def load_requests(path: str | Path | None = None) -> list[Request]:
    """User requests from a JSONL file of ``{"uid", "cluster", "prompt"}`` (default: the shipped 500)."""
    rows = _jsonl(Path(path) if path else DATA_DIR / "user_prompts.jsonl")
    return [Request(str(r["uid"]), str(r["cluster"]), str(r["prompt"]), is_code_request(str(r["prompt"])))
            for r in rows]


def split_requests(requests: Sequence[Request], *, seed: int = 0, drop_code: bool = True) -> dict[str, list[Request]]:
    """Requests split by cluster into ``test / train / router_train / router_val / eval`` (20/40/16/4/20% of clusters).

    Clusters are sorted by name and shuffled with ``seed``; the assignment of clusters does not
    depend on ``drop_code``, which only removes code prompts afterwards (so a split may keep one
    prompt of a cluster). Within a split, requests keep their input order. ``test`` takes the
    first third of the clusters that were once all ``train`` (20% of all), so ``eval`` and the
    router splits kept their clusters when ``test`` was added.
    """
    clusters = sorted({r.cluster for r in requests})
    order = np.random.default_rng(seed).permutation(len(clusters))
    parts = ("train", "router_train", "router_val")  # then eval: the rest
    counts = [round(len(clusters) * SPLIT_FRACTIONS[s]) for s in parts]
    bounds = np.cumsum([0, *counts, len(clusters) - sum(counts)])
    where = {clusters[int(j)]: name for k, name in enumerate((*parts, "eval"))
             for j in order[bounds[k]: bounds[k + 1]]}
    for j in order[: round(len(clusters) * TEST_FRACTION)]:
        where[clusters[int(j)]] = "test"
    splits: dict[str, list[Request]] = {s: [] for s in SPLITS}
    for r in requests:
        if not (drop_code and r.is_code):
            splits[where[r.cluster]].append(r)
    return splits


@dataclass
class PersonaData:
    """The records and requests of one split (see :func:`load_split`)."""

    records: list[PersonaRecord]
    requests: list[Request]


def load_split(split: str, *, seed: int = 0, num_records: int | None = None, drop_code: bool = True,
               max_request_chars: int | None = None) -> PersonaData:
    """Composed records and shipped requests of one split.

    ``eval`` and ``test`` use their own held-out professional cores and requests; the other splits
    share the ``train`` cores and have disjoint request clusters.

    Args:
        split: ``train``, ``router_train``, ``router_val``, ``eval`` or ``test``.
        seed: Seeds the records and the cluster split.
        num_records: How many composed records (None: all).
        drop_code: Leave out code-only requests.
        max_request_chars: Leave out requests longer than this (None: keep all). Applied after the
            cluster split, so the splits stay disjoint; a few Arena-Hard prompts run to thousands
            of tokens, and one of them pads a whole batch to its length.
    """
    read_split(split, "envs.data.persona.load_split")
    part = split if split in ("eval", "test") else "train"
    requests = split_requests(load_requests(), seed=seed, drop_code=drop_code)[split]
    if max_request_chars is not None:
        requests = [r for r in requests if len(r.prompt) <= max_request_chars]
    return PersonaData(compose_records(num_records, seed, part=part), requests)


__all__ = [
    "CODE_PATTERN",
    "FACETS",
    "FACET_LABELS",
    "FACET_LEXICON",
    "IDENTITY_PATTERN",
    "LEXICON_STEMS",
    "SPLITS",
    "SPLIT_FRACTIONS",
    "TEST_FRACTION",
    "STOPWORDS",
    "PersonaData",
    "PersonaRecord",
    "Request",
    "compose_records",
    "content_stems",
    "fact_pools",
    "is_code_request",
    "load_nemotron_records",
    "load_personagym",
    "load_requests",
    "load_split",
    "professional_cores",
    "split_requests",
    "stem",
    "tag_fact",
    "third_person",
    "words",
]

"""Persona data: composed records, identity filter, Nemotron loader, request splits by cluster."""

from __future__ import annotations

import json
import sys

import pytest

from envs.data import DATA_DIR
from envs.data.persona import (
    FACET_LABELS,
    FACETS,
    IDENTITY_PATTERN,
    SPLITS,
    PersonaRecord,
    Request,
    compose_records,
    fact_pools,
    is_code_request,
    load_nemotron_records,
    load_personagym,
    load_requests,
    load_split,
    professional_cores,
    split_requests,
    tag_fact,
    third_person,
)

SPC = {row["id"]: row["facts"] for row in map(json.loads, (DATA_DIR / "personas_spc.jsonl").read_text().splitlines())}


def test_facets_and_labels():
    assert FACETS == ("professional", "sports", "arts", "travel", "culinary")
    assert [FACET_LABELS[f] for f in FACETS] == ["Professional", "Sports", "Arts", "Travel", "Culinary"]


# --- composed records ----------------------------------------------------------------------------


def test_composed_records_are_deterministic_and_prefix_stable():
    a, b = compose_records(20, seed=3), compose_records(20, seed=3)
    assert a == b
    assert compose_records(8, seed=3) == a[:8]
    assert [r.id for r in a] == [f"all-s3-{i}" for i in range(20)]
    assert len({r.id for r in a}) == 20
    other = compose_records(20, seed=4)
    assert [r.facets for r in other] != [r.facets for r in a]
    assert len(compose_records(seed=0, part="train")) == 122 and len(compose_records(part="eval")) == 50
    assert len(compose_records(part="test")) == 25
    assert len(compose_records(400, seed=0, part="eval")) == 400  # cycles through the cores


def test_composed_records_attribute_their_sources():
    descriptions = {p["id"]: p["description"] for p in load_personagym()}
    for record in compose_records(60, seed=1):
        assert set(record.facets) == set(FACETS) and all(record.facets[f].strip() for f in FACETS)
        (pg,) = record.sources["professional"]
        assert record.facets["professional"] == descriptions[pg].rstrip(".") + "."
        for facet in FACETS[1:]:
            ids = record.sources[facet]
            assert 1 <= len(ids) <= 2 and all(i.startswith("spc-") for i in ids)
            for source in ids:  # each source block holds a fact that, rewritten, is part of the facet text
                assert any(third_person(f) in record.facets[facet] for f in SPC[source])


def test_train_and_eval_records_have_disjoint_professional_cores():
    train = {p["id"] for p in professional_cores("train")}
    held = {p["id"] for p in professional_cores("eval")}
    test = {p["id"] for p in professional_cores("test")}
    assert len(train) == 122 and len(held) == 50 and len(test) == 25
    assert not train & held and not train & test and not held & test
    assert "pg-12" not in train | held | test  # no occupation at all: left out
    assert {r.sources["professional"][0] for r in compose_records(part="eval")} == held
    with pytest.raises(ValueError, match="part"):
        professional_cores("holdout")


def test_fact_pools_sizes_and_identity_filter():
    pools = fact_pools()
    sizes = {f: len(p) for f, p in pools.items()}
    assert sizes == {"sports": 37, "arts": 75, "travel": 14, "culinary": 61}
    assert min(sizes, key=sizes.get) == "travel"
    for facet, pool in pools.items():
        for _, fact in pool:
            assert tag_fact(fact) == facet and not IDENTITY_PATTERN.search(fact)


@pytest.mark.parametrize(
    "fact, facet",
    [
        ("I love to bake cookies.", "culinary"),
        ("I like to go hiking in the spring.", "sports"),
        ("I play the violin and the guitar.", "arts"),
        ("I have traveled to six countries.", "travel"),
        ("I am 60years old and love jazz.", None),  # age
        ("I am a swim coach at my local pool.", None),  # job
        ("My wife and i love to travel.", None),  # family
        ("I live in alaska and love skiing.", None),  # home town
        ("I am a boy who likes soccer.", None),  # gender
        ("I like hiking and pizza.", None),  # two facets
        ("My favorite color is green.", None),  # no facet
    ],
)
def test_tag_fact(fact, facet):
    assert tag_fact(fact) == facet


def test_third_person():
    assert third_person("I love my dog") == "They love their dog."
    assert third_person("Eating is something i do when i am bored.") == "Eating is something they do when they are bored."
    assert third_person("Love to read drama books.") == "They love to read drama books."
    assert third_person("I visit europe twice a year.") == "They visit Europe twice a year."


def test_record_round_trips_and_rejects_missing_facets():
    record = compose_records(1)[0]
    assert PersonaRecord.from_dict(json.loads(json.dumps(record.to_dict()))) == record
    with pytest.raises(ValueError, match="culinary"):
        PersonaRecord("x", {f: "text" for f in FACETS[:-1]})
    flat = PersonaRecord("y", {f: "line one\n\nline   two" for f in FACETS})
    assert flat.facets["arts"] == "line one line two"


# --- Nemotron loader -----------------------------------------------------------------------------


def test_nemotron_loader_reads_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = {f"{f}_persona": [f"{f} text {i}" for i in range(3)] for f in FACETS}
    rows["arts_persona"][1] = ""  # an incomplete row is skipped
    pq.write_table(pa.table({"uuid": ["u0", "u1", "u2"], **rows}), tmp_path / "a.parquet")
    pq.write_table(pa.table({k: v[:2] for k, v in rows.items() if k != "arts_persona"} |
                            {"arts_persona": ["x", "y"]}), tmp_path / "b.parquet")
    records = load_nemotron_records([tmp_path / "a.parquet", tmp_path / "b.parquet"])
    assert [r.id for r in records] == ["u0", "u2", "nemotron-3", "nemotron-4"]
    assert records[0].facets["travel"] == "travel text 0" and records[0].sources["travel"] == ["u0"]
    assert len(load_nemotron_records(tmp_path / "a.parquet", limit=1)) == 1
    pq.write_table(pa.table({"professional_persona": ["p"]}), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="sports_persona"):
        load_nemotron_records(tmp_path / "bad.parquet")


def test_nemotron_loader_names_the_missing_package(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(ImportError, match="pip install pyarrow"):
        load_nemotron_records(tmp_path / "x.parquet")


# --- requests --------------------------------------------------------------------------------------


def test_requests_load_and_code_flag():
    requests = load_requests()
    assert len(requests) == 500 and len({r.cluster for r in requests}) == 250
    assert sum(r.is_code for r in requests) == 258
    assert is_code_request("Write a python function that reverses a list.")
    assert is_code_request("Fix this:\n```js\nlet x = 1\n```")
    assert not is_code_request("Give me a recipe for a quick high-protein breakfast.")
    assert not is_code_request("Prove that there are infinitely many irrational numbers")


def test_split_keeps_clusters_together_and_drops_code():
    requests = load_requests()
    full = split_requests(requests, seed=0, drop_code=False)
    assert list(full) == list(SPLITS)
    assert {k: len(v) for k, v in full.items()} == {"train": 200, "router_train": 80, "router_val": 20, "eval": 100,
                                                    "test": 100}
    home = {}
    for split, items in full.items():
        for r in items:
            assert home.setdefault(r.cluster, split) == split  # both prompts of a cluster in one split
    dropped = split_requests(requests, seed=0)
    assert {k: len(v) for k, v in dropped.items()} == {"train": 87, "router_train": 45, "router_val": 8, "eval": 53,
                                                       "test": 49}
    for split in SPLITS:  # dropping only removes the code prompts; the cluster assignment is unchanged
        assert dropped[split] == [r for r in full[split] if not r.is_code]
    assert split_requests(requests, seed=0) == dropped
    other = split_requests(requests, seed=1, drop_code=False)
    assert {r.uid for r in other["eval"]} != {r.uid for r in full["eval"]}


def test_load_split_pairs_split_records_and_requests():
    train, held = load_split("train"), load_split("eval")
    assert all(r.id.startswith("train-") for r in train.records) and all(r.id.startswith("eval-") for r in held.records)
    assert not {r.cluster for r in train.requests} & {r.cluster for r in held.requests}
    assert isinstance(train.requests[0], Request) and not any(r.is_code for r in train.requests)
    assert len(load_split("router_val", drop_code=False).requests) == 20
    test = load_split("test")
    assert all(r.id.startswith("test-") for r in test.records)
    assert not {r.cluster for r in test.requests} & ({r.cluster for r in train.requests} | {r.cluster for r in held.requests})
    with pytest.raises(ValueError, match="split"):
        load_split("holdout")

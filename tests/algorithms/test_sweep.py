"""algorithms.sweep on hand-written run folders: variant names, the table and the plot."""

import json
import sys

import pytest
import yaml

from algorithms import sweep


def _run(folder, overrides, curve):
    (folder / ".hydra" / "12-00-00-000001").mkdir(parents=True)
    (folder / ".hydra" / "12-00-00-000001" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    rows = [{"step": s, "perf/learn_s": 30.0, "perf/idle_s": 0.0, **({f"curve/{k}": v for k, v in c.items()})}
            for s, c in curve]
    (folder / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_sweep_tabulates_the_last_and_best_curve_points_of_every_variant(tmp_path, monkeypatch, capsys):
    _run(tmp_path / "0", ["algorithm.lr=1e-4", "hydra.sweep.dir=x"],
         [(5, {"questions_per_turn/direct": 0.1, "style/x": 1}), (10, {"questions_per_turn/direct": 0.3})])
    _run(tmp_path / "1", ["algorithm.lr=3e-4"],
         [(5, {"questions_per_turn/direct": 0.5}), (10, {"questions_per_turn/direct": 0.2, "loss": 9})])
    variants = sweep.collect(tmp_path)
    assert list(variants) == ["algorithm.lr=1e-4", "algorithm.lr=3e-4"]  # hydra.* overrides left out
    table = sweep.tabulate(variants, ("questions_per_turn/*",))
    assert "[1] algorithm.lr=1e-4" in table and "[2] algorithm.lr=3e-4" in table
    line = next(row for row in table.splitlines() if row.startswith("| questions_per_turn/direct"))
    assert "0.300 (best 0.300 @ 10)" in line and "0.200 (best 0.500 @ 5)" in line
    assert "style/x" not in table and "| steps | 10 | 10 |" in table
    lower = sweep.tabulate({"a": [{"step": 5, "curve/quality/h/degenerate_share": 0.4},
                                  {"step": 10, "curve/quality/h/degenerate_share": 0.1}]}, ("quality/*",))
    assert "0.100 (best 0.100 @ 10)" in lower  # a lower-is-better figure's best point is its minimum
    assert "| training minutes (rollouts + updates) | 1.0 | 1.0 |" in table
    monkeypatch.setattr(sys, "argv", ["sweep", str(tmp_path), "--metrics", "questions_per_turn/*"])
    sweep.main()
    assert (tmp_path / "sweep.md").read_text() == table and (tmp_path / "sweep.png").stat().st_size > 0
    assert "wrote" in capsys.readouterr().out


def test_sweep_of_an_empty_folder_says_what_it_looked_for(tmp_path):
    with pytest.raises(FileNotFoundError, match="history.jsonl"):
        sweep.collect(tmp_path)


def test_sweep_legend_names_the_shared_overrides_once():
    shared, own = sweep.split_overrides(["env=t steps=20 lr=3e-4", "env=t steps=20 lr=3e-4 lr=2e-4 mult=5",
                                         "env=t steps=20 lr=3e-4 tpe=1"])
    assert shared == "env=t steps=20 lr=3e-4" and own == ["", "lr=2e-4 mult=5", "tpe=1"]
    table = sweep.tabulate({"env=t a=1": [{"step": 1}], "env=t a=2": [{"step": 1}]}, ("x",))
    assert table.startswith("Variants (all with: env=t):") and "[1] a=1" in table and "[2] a=2" in table
    assert sweep.split_overrides(["env=t a=1"]) == ("", ["env=t a=1"])  # one variant: nothing is "shared"

"""docs/benchmarks.md is what the committed results give, and every study on the page has a
section and goals the goals table can read."""

from __future__ import annotations

from benchmarks import markdown as md
from benchmarks import report


def test_the_benchmarks_page_is_current_with_the_results():
    # a result changed without `python -m benchmarks report` (or the page edited by hand)
    assert report.build() + "\n" == report.DOC.read_text(), (
        "docs/benchmarks.md differs from benchmarks/results: run `python -m benchmarks report`"
    )


def test_every_study_on_the_page_renders_a_section_and_names_well_formed_goals():
    for module in report.studies():
        lines = module.render()
        assert lines and all(isinstance(line, str) for line in lines), module.__name__
        assert any(line.startswith("## ") for line in lines), module.__name__
        for goal in getattr(module, "GOALS", []):
            assert isinstance(goal, md.Goal), module.__name__
            assert goal.op in ("<=", ">=", ">") and goal.file.endswith(".json"), goal
    files = [g.file for g in report.goals()]
    assert "faithfulness_fashion.json" in files and "solvers.json" in files


def test_a_goal_reads_its_number_and_says_whether_it_is_met():
    goal = md.Goal("x.json", ("summary", "ratio"), "<=", 0.05, "time")
    assert goal.met(0.05) and not goal.met(0.0501)
    assert md.Goal("x.json", ("k",), ">", 5.0, "gap").met(5.1)
    assert md.dig({"summary": {"ratio": 0.1}}, goal.keys) == 0.1
    assert md.dig({"summary": {}}, goal.keys) is None

"""The README's Measured table is what ``python -m benchmarks.readme`` prints from the committed results."""

from __future__ import annotations

import json

import pytest

from benchmarks import readme


def test_committed_readme_matches_the_results_files():
    current = readme.README.read_text()
    assert readme.splice(current, readme.table()) == current, (
        "README.md's Measured table differs from the results files: run `python -m benchmarks.readme --write`")
    assert readme.main(["--check"]) == 0


def test_every_accuracy_carries_n_and_an_interval_and_set_metrics_their_null():
    body = readme.table()
    assert "% CI " in body and "/120, 95% CI" in body  # the voxel preset's 100 of 120 with its Wilson interval
    assert "a perfect generator at these sizes" in body
    assert "6.8x" not in body  # the straw-man latent-cache figure is gone


def test_a_figure_short_of_its_target_is_marked():
    assert readme.ratio_figure({"median": 0.97, "min": 0.9, "max": 1.04}) == "0.970 (0.90-1.04)"
    assert readme.ratio_figure({"median": 1.03, "min": 0.98, "max": 1.08}).endswith("**short of <= 1**")


def test_a_share_that_cannot_come_from_n_items_is_refused():
    assert readme.share(100 / 120, 120) == "83.3% (100/120, 95% CI 75.7-88.9%)"
    with pytest.raises(ValueError, match="a share of 0.5 cannot come from 7 items"):
        readme.share(0.5, 7)


def test_missing_results_and_markers_fail_with_the_file_named(tmp_path, monkeypatch):
    monkeypatch.setattr(readme, "REPO", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"benchmarks/results/perf/results.json is missing"):
        readme.perf_rows()
    with pytest.raises(ValueError, match="README.md lacks the markers"):
        readme.splice("# no table here", "| a |")


def test_check_mode_reports_a_stale_table(tmp_path, monkeypatch, capsys):
    stale = tmp_path / "README.md"
    stale.write_text(f"intro\n{readme.BEGIN}\n| old |\n{readme.END}\nrest\n")
    monkeypatch.setattr(readme, "README", stale)
    monkeypatch.setattr(readme, "table", lambda: "| new |")
    assert readme.main(["--check"]) == 1 and "differs from the results files" in capsys.readouterr().err
    assert readme.main(["--write"]) == 0
    assert stale.read_text() == f"intro\n{readme.BEGIN}\n| new |\n{readme.END}\nrest\n"
    assert json.dumps(readme.main(["--check"])) == "0"

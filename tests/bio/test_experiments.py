"""The biology experiments run end to end (quick budgets: a pipeline check, not results)."""

from __future__ import annotations

import json

from unigrad.cli import main


def test_bio_table_writes_a_table_with_every_rule_and_task(tmp_path, capsys) -> None:
    out = tmp_path / "table"
    assert main(["experiment", "bio-table", "--quick", "--seeds", "1", "--out", str(out), "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert len(results["cells"]) == 5 * 8
    assert all(len(c["finals"]) == 1 for c in results["cells"].values())
    report = (out / "report.md").read_text()
    assert "| BPTT |" in report and "| Miconi |" in report and "mackey-glass" in report
    assert (out / "learning-curves.png").stat().st_size > 10_000
    assert "wrote" in capsys.readouterr().out


def test_noise_experiments_run(tmp_path) -> None:
    for name in ("noise-resource", "noise-access"):
        out = tmp_path / name
        assert main(["experiment", name, "--quick", "--seeds", "1", "--out", str(out), "--no-progress"]) == 0
        assert (out / "report.md").exists() and (out / "results.json").exists()
    assert (tmp_path / "noise-resource" / "noise-resource.png").exists()


def test_convergence_flags_are_refused_for_other_experiments(capsys) -> None:
    assert main(["experiment", "bio-table", "--kappa", "10"]) == 2
    assert "--kappa apply only to the convergence-orders experiment" in capsys.readouterr().err

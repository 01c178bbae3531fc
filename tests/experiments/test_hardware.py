"""The hardware experiments run end to end (quick budgets: a pipeline check, not results)."""

from __future__ import annotations

import json

from unigrad.cli import main


def test_hardware_experiments_write_their_tables(tmp_path, capsys) -> None:
    out = tmp_path / "mismatch"
    assert main(["experiment", "hardware-mismatch", "--quick", "--seeds", "1", "--out", str(out), "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert len(results["runs"]) == 1 + 5 * 5  # the ideal reference and every mode at every level
    report = (out / "report.md").read_text()
    for mode in ("deployed-backprop", "hardware-aware", "in-situ-anp", "in-situ-danp", "mgd"):
        assert f"| {mode} |" in report
    assert (out / "hardware-mismatch.png").stat().st_size > 10_000
    situ = results["runs"]["in-situ-anp|0.1|0"]["history"][-1]["counts"]
    assert situ["random_bits"] == 0 and situ["writes"] > 0
    out = tmp_path / "intrinsic"
    assert (
        main(["experiment", "hardware-intrinsic", "--quick", "--seeds", "1", "--out", str(out), "--no-progress"]) == 0
    )
    assert "| in-situ-danp |" in (out / "report.md").read_text()
    assert "wrote" in capsys.readouterr().out

"""``unigrad bench`` on the command line: --list, a tiny run, one-line errors with exit status 2."""

from __future__ import annotations

from unigrad import cli
from unigrad.suite.tasks import TASKS


def test_list_prints_tasks_budgets_and_methods(capsys):
    assert cli.main(["bench", "--list"]) == 0
    out = capsys.readouterr().out
    for name in TASKS:
        assert name in out
    assert "budget 1e+04 FE (one unit = one episode)" in out
    assert "methods: spsa, es, mezo, anp, backprop" in out


def test_unknown_task_and_method_are_one_line_errors(capsys):
    assert cli.main(["bench", "--tasks", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown task 'nope'; valid tasks:") and err.count("\n") == 1
    assert "Traceback" not in err
    assert cli.main(["bench", "--tasks", "sphere-10", "--methods", "spsa,nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown method 'nope'; valid methods:") and err.count("\n") == 1
    assert cli.main(["bench", "--budget-scale", "-1"]) == 2
    assert capsys.readouterr().err.startswith("error: argument --budget-scale")


def test_tiny_run_from_the_command_line(tmp_path, capsys):
    argv = ["bench", "--tasks", "sphere-10", "--methods", "es", "--seeds", "1", "--budget", "200"]
    assert cli.main([*argv, "--out", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "## sphere-10" in out and (tmp_path / "report.md").exists()

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
    for name in ("noise-resource", "noise-access", "bio-lif"):
        out = tmp_path / name
        assert main(["experiment", name, "--quick", "--seeds", "1", "--out", str(out), "--no-progress"]) == 0
        assert (out / "report.md").exists() and (out / "results.json").exists()
    assert (tmp_path / "noise-resource" / "noise-resource.png").exists()
    assert "| BPTT (surrogate) |" in (tmp_path / "bio-lif" / "report.md").read_text()


def test_convergence_flags_are_refused_for_other_experiments(capsys) -> None:
    assert main(["experiment", "bio-table", "--kappa", "10"]) == 2
    assert "--kappa apply only to the convergence-orders experiment" in capsys.readouterr().err


def test_jobs_is_refused_for_other_experiments(capsys) -> None:
    assert main(["experiment", "noise-access", "--jobs", "2"]) == 2
    assert "--jobs applies only to the bio-table, finetune and hardware-* experiments" in capsys.readouterr().err


def test_parallel_cells_reproduce_the_serial_ones(tmp_path) -> None:
    import torch

    from unigrad.experiments.bio_table import RULES, bio_table

    rules = tuple(r for r in RULES if r.label in ("BPTT", "Miconi"))
    # the pool's workers run one torch thread each; the serial cells run here, so this process runs one thread
    # too: then both sides are the same ops in the same order on the same machine, and compare bitwise
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for jobs in (1, 2):
            bio_table(
                tmp_path / f"j{jobs}",
                seeds=2,
                trials=32,
                tasks=("dnms",),
                rules=rules,
                episodes=4,
                control_tasks=("cartpole",),
                jobs=jobs,
            )
    finally:
        torch.set_num_threads(threads)
    serial = json.loads((tmp_path / "j1" / "results.json").read_text())
    parallel = json.loads((tmp_path / "j2" / "results.json").read_text())
    for key, cell in serial["cells"].items():
        assert cell["finals"] == parallel["cells"][key]["finals"]
        scores = [[p["score"] for p in run] for run in serial["curves"][key]]
        assert scores == [[p["score"] for p in run] for run in parallel["curves"][key]]
    assert serial["control"]["cartpole|NRL"]["curves"] == parallel["control"]["cartpole|NRL"]["curves"]
    assert len(serial["control"]) == 2


def test_table_cells_build_the_network_each_rule_needs() -> None:
    import torch

    from unigrad.experiments.bio_table import RULES, SETUPS, build

    miconi = next(r for r in RULES if r.label == "Miconi")
    bptt = next(r for r in RULES if r.label == "BPTT")
    task, net = build(miconi, "dnms", 0)
    # exact float equalities of Python floats: correctly rounded IEEE operations, the same on any machine
    assert net.dt / net.tau == miconi.alpha and task.dt == net.dt
    assert not net.out.weight.requires_grad and torch.equal(net.out.weight[0, :2], torch.tensor([1.0, 0.0]))
    task, net = build(bptt, "dnms", 0)
    assert net.dt == SETUPS["dnms"].dt and net.out.weight.requires_grad
    _, net = build(miconi, "mackey-glass", 0)  # defined in steps: the rule's alpha does not apply
    assert net.dt / net.tau == SETUPS["mackey-glass"].dt / SETUPS["mackey-glass"].tau
    assert miconi.options_for("dnms")["condition"] == "inputs" and miconi.options_for("copy")["condition"] == "global"


def test_a_finer_step_keeps_the_evidence_of_a_perceptual_decision_trial() -> None:
    from unigrad.experiments.bio_table import RULES, build

    miconi = next(r for r in RULES if r.label == "Miconi")
    bptt = next(r for r in RULES if r.label == "BPTT")
    fine, _ = build(miconi, "perceptual-decision", 0)
    coarse, _ = build(bptt, "perceptual-decision", 0)
    assert fine.dt < coarse.dt
    # the same Φ(c·√n/σ) with n and σ rescaled together: the erf arguments differ by a few eps64, so ≲ 1e-15
    assert abs(fine.ideal_accuracy() - coarse.ideal_accuracy()) < 1e-9

"""The pure computations of the report: mean curves, time to reach, best ZO method, win matrix."""

from __future__ import annotations

import math

import numpy as np
import pytest

from unigrad.suite.report import best_zeroth_order, mean_curve, speedup, time_to_reach, win_matrix
from unigrad.suite.tasks import PEERS

# Every comparison here is of float64 interpolations and means of small integers and halves: exact or within a few
# eps64, ≪ pytest.approx's rel 1e-6 and assert_allclose's rtol 1e-7.


def test_time_to_reach_interpolates_between_points():
    xs, ys = [0, 10, 20, 30], [0.1, 0.3, 0.5, 0.6]
    assert time_to_reach(xs, ys, 0.4, higher_is_better=True) == pytest.approx(15.0)
    assert time_to_reach(xs, ys, 0.6, higher_is_better=True) == pytest.approx(30.0)
    assert time_to_reach(xs, ys, 0.05, higher_is_better=True) == 0
    assert time_to_reach(xs, ys, 0.7, higher_is_better=True) is None
    down = [100.0, 10.0, 1.0, 0.5]
    assert time_to_reach(xs, down, 5.5, higher_is_better=False) == pytest.approx(15.0)
    assert time_to_reach(xs, down, 0.1, higher_is_better=False) is None


def test_mean_curve_holds_each_run_at_its_last_value_and_ends_at_the_mean_final():
    a = [{"seconds": 0.0, "metric": 0.0}, {"seconds": 2.0, "metric": 2.0}]
    b = [{"seconds": 0.0, "metric": 0.0}, {"seconds": 1.0, "metric": 4.0}, {"seconds": 4.0, "metric": 4.0}]
    x, y = mean_curve([a, b], "seconds", points=5)
    assert x[0] == 0 and x[-1] == 4.0  # up to the longest run's end
    np.testing.assert_allclose(y, [0.0, 2.5, 3.0, 3.0, 3.0])  # a holds 2 after 2 s
    assert y[-1] == (a[-1]["metric"] + b[-1]["metric"]) / 2
    x1, y1 = mean_curve([a], "seconds")
    np.testing.assert_allclose(x1, [0, 2])
    np.testing.assert_allclose(y1, [0, 2])
    assert len(mean_curve([], "seconds")[0]) == 0


def test_best_zeroth_order_skips_peers_and_higher_orders():
    methods = {
        "spsa": {"name": "spsa", "order": 0, "mean": 0.5},
        "es": {"name": "es", "order": 0, "mean": 0.6},
        "mezo": {"name": "mezo", "order": 0, "mean": None},
        "backprop": {"name": "backprop", "order": 1, "mean": 0.9},
        PEERS[0]: {"name": PEERS[0], "order": 0, "mean": 0.8},
    }
    assert best_zeroth_order(methods, higher_is_better=True) == "es"
    assert best_zeroth_order(methods, higher_is_better=False) == "spsa"
    assert best_zeroth_order({"b": methods["backprop"]}, higher_is_better=True) is None


def test_speedup():
    assert speedup(10.0, 2.0) == 5.0
    assert speedup(None, 2.0) is None and speedup(1.0, None) is None
    assert math.isinf(speedup(1.0, 0.0))


def test_win_matrix_counts_seeds_and_tasks_with_half_ties():
    tasks = [
        (True, {"a": {0: 0.9, 1: 0.5}, "b": {0: 0.8, 1: 0.5}, "c": {0: 0.1}}),
        (False, {"a": {0: 3.0}, "b": {0: 1.0}}),
    ]
    labels, frac, counts = win_matrix(tasks)
    assert labels == ["a", "b", "c"]
    i = {k: n for n, k in enumerate(labels)}
    assert counts[i["a"], i["b"]] == 3 and frac[i["a"], i["b"]] == pytest.approx((1 + 0.5 + 0) / 3)
    assert frac[i["b"], i["a"]] == pytest.approx((0 + 0.5 + 1) / 3)
    assert counts[i["a"], i["c"]] == 1 and frac[i["a"], i["c"]] == 1.0 and frac[i["c"], i["b"]] == 0.0
    assert np.isnan(frac[i["a"], i["a"]])
    np.testing.assert_allclose(frac + frac.T, np.where(counts > 0, 1.0, np.nan))


def test_best_zeroth_order_breaks_ties_by_wall_time():
    methods = {
        "spsa": {"name": "spsa", "order": 0, "mean": 500.0, "seconds_median": 14.0},
        "mezo": {"name": "mezo", "order": 0, "mean": 500.0, "seconds_median": 7.7},
        "es": {"name": "es", "order": 0, "mean": 455.0, "seconds_median": 1.0},
    }
    assert best_zeroth_order(methods, higher_is_better=True) == "mezo"


def test_curve_spread_bands_the_runs_around_their_mean():
    from unigrad.suite.report import curve_spread

    a = [{"seconds": 0.0, "metric": 0.0}, {"seconds": 2.0, "metric": 1.0}]
    b = [{"seconds": 0.0, "metric": 1.0}, {"seconds": 2.0, "metric": 3.0}]
    grid, mean, low, high = curve_spread([a, b], "seconds", points=3)
    assert np.allclose(grid, [0, 1, 2]) and np.allclose(mean, [0.5, 1.25, 2.0])
    assert np.allclose(low, [0.0, 0.5, 1.0]) and np.allclose(high, [1.0, 2.0, 3.0])

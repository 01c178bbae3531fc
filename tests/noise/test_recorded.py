"""RecordedNoise: keyed windows of a recorded trace, wrapping around, summed over devices; files and errors."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from tests.noise._processes import zscore
from unigrad.core.errors import UnigradError
from unigrad.noise.recorded import RecordedNoise


def ar1(n: int, a: float, seed: int, columns: int = 1) -> np.ndarray:
    """A stationary AR(1) trace ``x_{t+1} = a·x_t + √(1 − a²)·ε``, shape ``(n,)`` or ``(n, columns)``."""
    rng = np.random.default_rng(seed)
    eps = rng.standard_normal((n, columns))
    x = np.empty((n, columns))
    x[0] = eps[0]
    for t in range(1, n):
        x[t] = a * x[t - 1] + math.sqrt(1 - a * a) * eps[t]
    return x[:, 0] if columns == 1 else x


def bartlett_se(a: float, k: int, n: int) -> float:
    """Bartlett's standard error of the lag-``k`` sample autocorrelation of ``n`` products of an AR(1)."""
    return math.sqrt(((1 + a * a) * (1 - a ** (2 * k)) / (1 - a * a) - 2 * k * a ** (2 * k)) / n)


def save(tmp_path: Path, name: str, data: np.ndarray) -> Path:
    path = tmp_path / name
    if name.endswith(".npy"):
        np.save(path, data)
    else:
        np.savetxt(path, data, delimiter=",", fmt="%.17g")
    return path


@pytest.fixture
def trace(tmp_path: Path) -> tuple[Path, np.ndarray]:
    data = np.random.default_rng(0).standard_normal(500) * 0.3 + 1.25
    return save(tmp_path, "trace.npy", data), data


def test_keyed_replay_bitwise(trace: tuple[Path, np.ndarray]) -> None:
    path, _ = trace
    proc = RecordedNoise(path, devices=3)
    a = proc.sequence(40, (6, 2), seed=1, trial=2, stream=3)
    assert a.shape == (40, 6, 2) and a.dtype == torch.float32
    assert torch.equal(a, proc.sequence(40, (6, 2), seed=1, trial=2, stream=3))
    assert torch.equal(a, RecordedNoise(**proc.option_values()).sequence(40, (6, 2), seed=1, trial=2, stream=3))
    for change in ({"seed": 2}, {"trial": 3}, {"stream": 0}):
        key = {"seed": 1, "trial": 2, "stream": 3, **change}
        assert not torch.equal(a, proc.sequence(40, (6, 2), **key))
    # the starts do not depend on steps: a longer request extends a shorter one
    assert torch.equal(proc.sequence(100, (6, 2), seed=1, trial=2, stream=3)[:40], a)
    state = torch.get_rng_state()
    proc.sequence(10, (4,), seed=0, trial=0)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, proc.sequence(40, (6, 2), seed=1, trial=2, stream=3, dt=0.25))  # dt ignored
    assert proc.sequence(0, (3,), seed=0, trial=0).shape == (0, 3)
    assert proc.sequence(5, (), seed=0, trial=0).shape == (5,)


def test_values_are_consecutive_trace_samples(trace: tuple[Path, np.ndarray]) -> None:
    path, data = trace
    proc = RecordedNoise(path, center=False)
    assert proc.trace.dtype == torch.float64 and proc.trace.shape == (500, 1)
    steps, shape = 60, (7, 5)
    x = proc.sequence(steps, shape, seed=4, trial=1, dtype=torch.float64).numpy()
    rows, cols = proc.starts(shape, seed=4, trial=1)
    assert rows.shape == (1, *shape) and bool((cols == 0).all())
    r0 = rows[0].numpy()
    expected = data[(r0[None] + np.arange(steps)[:, None, None]) % data.size]
    np.testing.assert_array_equal(x, expected)  # exact: numpy indexing of the raw file
    # independently of starts(): each entry's first value locates it in the trace, the rest follow on
    for e in range(7):
        (hits,) = np.nonzero(data == x[0, e, 0])
        assert hits.size == 1
        np.testing.assert_array_equal(x[:, e, 0], data[(hits[0] + np.arange(steps)) % data.size])


def test_wraps_around_the_end(tmp_path: Path) -> None:
    data = np.arange(1.0, 8.0)  # 7 samples: a 20-step read wraps at least twice
    proc = RecordedNoise(save(tmp_path, "short.npy", data), center=False)
    x = proc.sequence(20, (50,), seed=0, trial=0, dtype=torch.float64).numpy()
    rows, _ = proc.starts(50, seed=0, trial=0)
    np.testing.assert_array_equal(x, data[(rows[0].numpy()[None] + np.arange(20)[:, None]) % 7])
    assert set(np.unique(rows.numpy())) == set(range(7))  # every start is possible
    # after the last sample comes the first
    last = x[:-1] == 7.0
    assert last.any() and bool((x[1:][last] == 1.0).all())


def test_starts_are_uniform(trace: tuple[Path, np.ndarray]) -> None:
    rows, _ = RecordedNoise(trace[0]).starts((20000,), seed=9, trial=0)
    counts = np.bincount(rows.numpy().ravel(), minlength=500)
    # the p-value is uniform for uniform starts: 1e-6 is the ≈ 5σ false-alarm rate (measured p = 0.92)
    assert stats.chisquare(counts).pvalue > 1e-6


def test_devices_sum_independent_reads(tmp_path: Path) -> None:
    data = ar1(1000, 0.5, seed=1, columns=1) + 3.0
    n, scale = 4, 0.5
    proc = RecordedNoise(save(tmp_path, "t.npy", data), devices=n, scale=scale)
    x = proc.sequence(30, (9,), seed=2, trial=5, dtype=torch.float64).numpy()
    rows, _ = proc.starts(9, seed=2, trial=5)
    centred = (data - data.mean()) * scale
    windows = centred[(rows.numpy()[:, None, :] + np.arange(30)[None, :, None]) % data.size]  # (n, steps, 9)
    # float64, |values| ≤ 10: the centring means (1000-term pairwise sums) differ by ≲ 20·eps64·5 and the sums of
    # 4 reads by ≲ 3·eps64·10, so ≲ 4e-14 apart in all, < 1e-13; likewise |mean| of the centred trace ≪ 1e-12
    np.testing.assert_allclose(x, windows.sum(0), rtol=0, atol=1e-13)
    assert len({tuple(rows[:, e].tolist()) for e in range(9)}) == 9
    assert proc.mean == pytest.approx(0.0, abs=1e-12)
    assert proc.variance == pytest.approx(n * scale**2 * data.var())  # float64 sums of 1000 terms: ≪ rel 1e-6


@pytest.mark.parametrize("center, normalize", [(False, False), (True, False), (True, True), (False, True)])
def test_mean_and_variance_of_the_sum(tmp_path: Path, center: bool, normalize: bool) -> None:
    data = np.random.default_rng(3).exponential(2.0, 4000)  # skewed, mean 2
    n, scale = 3, 1.5
    proc = RecordedNoise(save(tmp_path, "t.npy", data), devices=n, scale=scale, center=center, normalize=normalize)
    processed = data - data.mean() if center else data
    if normalize:
        processed = processed / processed.std()
    processed = processed * scale
    # float64 (pairwise) means of 4000 values ≤ 60, ×3: ≲ 3·50·eps64·10 ≈ 3e-13 apart, < 1e-12; variance ≪ rel 1e-6
    assert proc.mean == pytest.approx(n * processed.mean(), abs=1e-12)
    assert proc.variance == pytest.approx(n * processed.var())
    if normalize:
        assert proc.variance == pytest.approx(n * scale**2)
    x = proc.sequence(50, (4000,), seed=6, trial=0, dtype=torch.float64)
    m, v = x.mean(0), x.var(0, correction=0)  # entries are i.i.d. over keys: SEs from their spread
    assert zscore(float(m.mean()), proc.mean, float(m.std()) / math.sqrt(m.numel())) < 5
    # a per-entry variance about its own mean is biased low by Var(mean of T steps), from the trace's exact
    # circular autocovariances (a finite white trace still has sample autocorrelations of order 1/√4000)
    steps = x.shape[0]
    lag_sum = sum((1 - k / steps) * proc.autocovariance(k) for k in range(1, steps))
    expected_v = proc.variance - (proc.variance + 2 * lag_sum) / steps
    assert zscore(float(v.mean()), expected_v, float(v.std()) / math.sqrt(v.numel())) < 5


@pytest.mark.parametrize("devices", [1, 4])
def test_autocorrelation_of_an_ar1_trace_is_kept(tmp_path: Path, devices: int) -> None:
    a = 0.9
    data = ar1(50000, a, seed=4)
    proc = RecordedNoise(save(tmp_path, "ar.npy", data), devices=devices)
    x = proc.sequence(200, (500,), seed=0, trial=0, dtype=torch.float64).numpy()
    c = data - data.mean()
    var = x.var()
    for k in (1, 5, 20):
        measured = float((x[k:] * x[:-k]).mean() / var)
        trace_r = float((c * np.roll(c, -k)).mean() / c.var())  # circular, as the reads wrap
        # float64 sums of 50000 terms: ≪ rel 1e-6
        assert proc.autocovariance(k) / proc.variance == pytest.approx(trace_r)
        assert zscore(measured, trace_r, bartlett_se(a, k, x[k:].size)) < 5, (k, measured, trace_r)
        # and the trace is the AR(1) it was made to be (5 Bartlett SEs of a 50000-sample trace: 0.01 to 0.07)
        assert zscore(trace_r, a**k, bartlett_se(a, k, data.size)) < 5, (k, trace_r)
    # not white: consecutive samples really are consecutive (measured 0.90, SE 0.002)
    assert float((x[1:] * x[:-1]).mean() / var) > 0.8


def test_two_dimensional_trace_is_several_devices(tmp_path: Path) -> None:
    # time along axis 0, recorded devices along axis 1; each device centred on its own mean
    data = np.stack([np.arange(100.0), 1000 + np.arange(100.0) * 2, -50 + np.arange(100.0) * 3], axis=1)
    proc = RecordedNoise(save(tmp_path, "three.npy", data), center=False)
    assert proc.trace.shape == (100, 3) and proc.recorded == 3 and proc.length == 100
    x = proc.sequence(130, (300,), seed=1, trial=0, dtype=torch.float64).numpy()
    rows, cols = (t[0].numpy() for t in proc.starts(300, seed=1, trial=0))
    assert set(np.unique(cols)) == {0, 1, 2}
    np.testing.assert_array_equal(x, data[(rows[None] + np.arange(130)[:, None]) % 100, cols[None]])
    centred = RecordedNoise(save(tmp_path, "three.npy", data), center=True)
    # the same numpy ops on the same array (equal); |mean| of the centred trace ≲ 20·eps64·1200 ≈ 5e-12 < 1e-10
    np.testing.assert_allclose(centred.trace.numpy(), data - data.mean(0), atol=1e-12)
    assert centred.mean == pytest.approx(0.0, abs=1e-10)


def test_csv_and_npy_give_the_same_noise(tmp_path: Path) -> None:
    one = ar1(300, 0.7, seed=5)
    two = ar1(300, 0.7, seed=6, columns=2)
    for data in (one, two):
        npy = RecordedNoise(save(tmp_path, "t.npy", data), devices=2)
        csv = RecordedNoise(save(tmp_path, "t.csv", data), devices=2)
        assert torch.equal(npy.trace, csv.trace)
        assert torch.equal(npy.sequence(50, (5,), seed=3, trial=0), csv.sequence(50, (5,), seed=3, trial=0))
    # a header line is skipped; a single-line CSV is one trace
    (tmp_path / "h.csv").write_text("volts\n" + "\n".join(f"{v:.17g}" for v in one) + "\n")
    assert torch.equal(RecordedNoise(tmp_path / "h.csv").trace, RecordedNoise(save(tmp_path, "o.npy", one)).trace)
    (tmp_path / "row.csv").write_text(",".join(f"{v:.17g}" for v in one[:10]) + "\n")
    assert RecordedNoise(tmp_path / "row.csv").trace.shape == (10, 1)


def one_line_error(*args, **kwargs) -> str:
    with pytest.raises(UnigradError) as info:
        RecordedNoise(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_file_errors(tmp_path: Path) -> None:
    assert "does not exist" in one_line_error(tmp_path / "missing.npy")
    assert "missing.npy" in one_line_error(str(tmp_path / "missing.npy"))
    (tmp_path / "t.txt").write_text("1\n2\n")
    msg = one_line_error(tmp_path / "t.txt")
    assert ".npy" in msg and ".csv" in msg and ".txt" in msg
    assert "path" in one_line_error(3)
    np.save(tmp_path / "empty.npy", np.array([]))
    assert "empty" in one_line_error(tmp_path / "empty.npy")
    (tmp_path / "empty.csv").write_text("")
    assert "empty" in one_line_error(tmp_path / "empty.csv")
    (tmp_path / "header_only.csv").write_text("volts\n")
    assert "empty" in one_line_error(tmp_path / "header_only.csv")
    (tmp_path / "text.csv").write_text("a,b\nc,d\n")
    assert "non-numeric" in one_line_error(tmp_path / "text.csv")
    (tmp_path / "ragged.csv").write_text("1,2\n3\n4,5\n")
    assert "ragged" in one_line_error(tmp_path / "ragged.csv")
    (tmp_path / "nan.csv").write_text("1\nnan\n2\n")
    assert "NaN" in one_line_error(tmp_path / "nan.csv")
    np.save(tmp_path / "inf.npy", np.array([1.0, np.inf, 2.0]))
    assert "infinite" in one_line_error(tmp_path / "inf.npy")
    np.save(tmp_path / "cube.npy", np.zeros((2, 2, 2)))
    assert "1-D or 2-D" in one_line_error(tmp_path / "cube.npy")
    np.save(tmp_path / "obj.npy", np.array([1, "a"], dtype=object), allow_pickle=True)
    assert "obj.npy" in one_line_error(tmp_path / "obj.npy")
    np.save(tmp_path / "cplx.npy", np.array([1 + 1j, 2.0]))
    assert "real numbers" in one_line_error(tmp_path / "cplx.npy")
    (tmp_path / "junk.npy").write_bytes(b"not an npy file")
    assert "junk.npy" in one_line_error(tmp_path / "junk.npy")
    np.save(tmp_path / "flat.npy", np.full(10, 2.5))
    assert "constant" in one_line_error(tmp_path / "flat.npy")


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"devices": 0}, ["devices", ">= 1"]),
        ({"devices": 1.5}, ["devices", "integer"]),
        ({"devices": True}, ["devices"]),
        ({"scale": 0.0}, ["scale", "> 0"]),
        ({"scale": float("nan")}, ["scale"]),
        ({"center": 1}, ["center"]),
        ({"normalize": "yes"}, ["normalize"]),
        ({"accessible": None}, ["accessible"]),
    ],
)
def test_options_validated(trace: tuple[Path, np.ndarray], kwargs: dict, words: list[str]) -> None:
    msg = one_line_error(trace[0], **kwargs)
    for w in words:
        assert w in msg, (kwargs, msg)


def test_spec_and_option_parsing_round_trip(trace: tuple[Path, np.ndarray]) -> None:
    path = str(trace[0])
    for proc in (RecordedNoise(path), RecordedNoise(path, 4, 0.25, False, True, accessible=True)):
        name, *parts = proc.spec.split(":")
        assert name == "replay"
        given = dict(part.split("=", 1) for part in parts)
        assert list(given) == [*RecordedNoise.options, "accessible"]
        again = RecordedNoise(**{k: RecordedNoise.parse_option(k, v) for k, v in given.items()})
        assert again == proc and again.accessible is proc.accessible
        assert torch.equal(again.sequence(5, (3,), seed=0, trial=0), proc.sequence(5, (3,), seed=0, trial=0))
    assert RecordedNoise(path).accessible is False
    devices = RecordedNoise.parse_option("devices", "2")
    assert devices == 2 and isinstance(devices, int)
    with pytest.raises(UnigradError, match="center"):
        RecordedNoise.parse_option("center", "maybe")

"""Keyed regeneration, isolation from the global RNG, dtype/device and argument checks of every process."""

import pytest
import torch

from tests.noise._processes import IDS, PROCESSES
from unigrad.core.errors import UnigradError
from unigrad.noise import NOISES, NoiseProcess, OrnsteinUhlenbeck, SparseKicks, StochasticRelease, WhiteGaussian


@pytest.mark.parametrize("proc", PROCESSES, ids=IDS)
def test_same_key_regenerates_bitwise(proc: NoiseProcess) -> None:
    a = proc.sequence(20, (4, 5), seed=3, trial=7, stream=1, dt=0.5)
    b = proc.sequence(20, (4, 5), seed=3, trial=7, stream=1, dt=0.5)
    assert a.shape == (20, 4, 5)
    assert torch.equal(a, b)
    # a fresh, equal process gives the same noise too (processes are stateless)
    assert torch.equal(type(proc)(**proc.option_values()).sequence(20, (4, 5), seed=3, trial=7, stream=1, dt=0.5), a)


@pytest.mark.parametrize("proc", PROCESSES, ids=IDS)
@pytest.mark.parametrize("change", [{"seed": 4}, {"trial": 8}, {"stream": 2}])
def test_different_key_differs(proc: NoiseProcess, change: dict[str, int]) -> None:
    key = {"seed": 3, "trial": 7, "stream": 1}
    a = proc.sequence(20, (4, 5), **key)
    b = proc.sequence(20, (4, 5), **{**key, **change})
    assert not torch.equal(a, b)


@pytest.mark.parametrize("proc", PROCESSES, ids=IDS)
def test_global_rng_untouched(proc: NoiseProcess) -> None:
    state = torch.get_rng_state()
    proc.sequence(10, (3,), seed=0, trial=0)
    assert torch.equal(torch.get_rng_state(), state)


def test_processes_do_not_share_raw_draws() -> None:
    # OU's first step is σ·ε_0 and white noise is σ·ε_t: with a shared generator key they would coincide
    white = WhiteGaussian(1.0).sequence(1, (50,), seed=1, trial=2, stream=3)
    ou = OrnsteinUhlenbeck(1.0, tau=10.0).sequence(1, (50,), seed=1, trial=2, stream=3)
    assert not torch.equal(white, ou)
    # both threshold a first uniform draw at p: with a shared key the kick pattern would be the release mask
    kicks = SparseKicks(0.5, 1.0).sequence(1, (200,), seed=1, trial=2) != 0
    release = StochasticRelease(0.5).sequence(1, (200,), seed=1, trial=2, dtype=torch.bool)
    assert not torch.equal(kicks, release)
    tags = [cls.tag for cls in NOISES.values()]
    assert len(set(tags)) == len(tags)


def test_duplicate_tag_is_refused() -> None:
    with pytest.raises(TypeError, match="already used"):

        class Copy(WhiteGaussian):  # the class statement itself must fail
            tag = WhiteGaussian.tag


@pytest.mark.parametrize("proc", PROCESSES, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_dtype_respected_and_same_noise_at_every_dtype(proc: NoiseProcess, dtype: torch.dtype) -> None:
    ref = proc.sequence(30, (6,), seed=5, trial=1, dtype=torch.float32)
    out = proc.sequence(30, (6,), seed=5, trial=1, dtype=dtype)
    assert out.dtype == dtype and out.shape == ref.shape
    # same float32 draws; float32 arithmetic rounds by u = 6e-8 per op, and OU's recursion (a = e^{-0.2}) adds up
    # ≲ 4u/(1 − a) ≈ 1.3e-6 of max|ξ| (measured 1e-7), hence 2e-6; float16/bfloat16: half an ulp, 4.9e-4 / 3.9e-3
    tol = {torch.float64: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1e-2}[dtype]
    torch.testing.assert_close(out.float(), ref, rtol=tol, atol=tol * float(ref.abs().max()))


@pytest.mark.parametrize("proc", PROCESSES, ids=IDS)
def test_device_respected(proc: NoiseProcess) -> None:
    out = proc.sequence(3, (2,), seed=0, trial=0, device=torch.device("cpu"))
    assert out.device.type == "cpu"
    if torch.cuda.is_available():
        cuda = proc.sequence(3, (2,), seed=0, trial=0, device="cuda")
        assert cuda.device.type == "cuda"
        assert torch.equal(cuda, proc.sequence(3, (2,), seed=0, trial=0, device="cuda"))


@pytest.mark.parametrize("proc", PROCESSES, ids=IDS)
def test_empty_and_scalar_shapes(proc: NoiseProcess) -> None:
    assert proc.sequence(0, (3,), seed=0, trial=0).shape == (0, 3)
    assert proc.sequence(4, (0, 2), seed=0, trial=0).shape == (4, 0, 2)
    assert proc.sequence(4, (), seed=0, trial=0).shape == (4,)
    assert proc.sequence(4, 3, seed=0, trial=0).shape == (4, 3)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"steps": -1},
        {"steps": 2.0},
        {"shape": (2, -1)},
        {"shape": (2.5,)},
        {"seed": -1},
        {"seed": 1.0},
        {"trial": True},
        {"stream": -2},
        {"dt": 0.0},
        {"dt": float("nan")},
        {"dtype": torch.int64},
    ],
)
def test_bad_sequence_arguments(kwargs: dict) -> None:
    args = {"steps": 2, "shape": (3,), "seed": 0, "trial": 0, **kwargs}
    steps, shape = args.pop("steps"), args.pop("shape")
    with pytest.raises(UnigradError) as info:
        WhiteGaussian(1.0).sequence(steps, shape, **args)
    assert "\n" not in str(info.value)


def test_release_accepts_bool_and_integer_masks() -> None:
    proc = StochasticRelease(0.5)
    ref = proc.sequence(10, (8,), seed=2, trial=0)
    assert torch.equal(proc.sequence(10, (8,), seed=2, trial=0, dtype=torch.bool), ref.bool())
    assert torch.equal(proc.sequence(10, (8,), seed=2, trial=0, dtype=torch.int64), ref.long())

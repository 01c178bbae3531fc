"""One instance of every noise process, for the tests that apply to all of them."""

from unigrad.noise import (
    NoiseProcess,
    OrnsteinUhlenbeck,
    PoissonVariability,
    Rademacher,
    SparseKicks,
    StochasticRelease,
    WhiteGaussian,
)

PROCESSES: list[NoiseProcess] = [
    WhiteGaussian(0.3),
    OrnsteinUhlenbeck(0.3, tau=5.0),
    Rademacher(0.3),
    SparseKicks(0.2, 0.3),
    StochasticRelease(0.4),
    PoissonVariability(0.3, rate=0.5),
]
IDS = [p.name for p in PROCESSES]


def zscore(estimate: float, expected: float, se: float) -> float:
    """How many standard errors ``estimate`` lies from ``expected``.

    The noise tests assert ``zscore(...) < 5`` with ``se`` the estimator's standard error, from theory or
    from the spread of independent entries (each call says which). A correct process fails one such check
    with probability ≈ 6e-7, so any machine's draws pass (CPU kernels may differ in the last bits of a draw).
    """
    return abs(estimate - expected) / se

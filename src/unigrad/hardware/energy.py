"""Operation counts of a device and the energy they cost.

A device (:mod:`unigrad.hardware.device`) counts what it does in :class:`OpCounts`:

``analog_macs``
    multiply–accumulates done in the analog array (one input × one conductance, summed on a wire);
``digital_macs``
    multiply–accumulates done in digital logic (training a digital twin, the learner's own arithmetic);
``reads``
    array reads: one per output line per input vector (a column current sensed once);
``writes``
    programming events: one per cell whose conductance is changed;
``adc``, ``dac``
    analog-to-digital conversions (one per output value read) and digital-to-analog conversions (one per
    input value driven);
``mvms``
    analog matrix–vector products: one per input vector per array (all its MACs happen at once);
``random_bits``
    random bits the *learner* draws digitally (dithers, perturbations). Noise made by the device itself
    (read noise, a stochastic junction's telegraph noise) costs no random bits: that is the point of using it.

:class:`EnergyModel` turns counts into joules with per-operation energies the user sets. The defaults are
order-of-magnitude figures from the literature, for comparing methods under one set of assumptions, not a
model of any particular chip:

=================  ============  ======================================================================
operation          default       source
=================  ============  ======================================================================
digital MAC        4.6 pJ        32-bit float multiply 3.7 pJ + add 0.9 pJ at 45 nm (M. Horowitz,
                                 "Computing's energy problem", ISSCC 2014)
analog MAC         10 fJ         resistive crossbars report about 1–100 fJ per MAC including the array
                                 (e.g. W. Haensch, T. Gokmen, R. Puri, Proc. IEEE 107(1), 2019)
read               0.1 pJ        sensing one column (order of magnitude; included in the ADC in many
                                 designs — set 0 to fold it there)
write              10 pJ         one programming pulse of a resistive / phase-change cell (pJ to
                                 100 pJ; e.g. D. Ielmini & H.-S. P. Wong, Nature Electronics 1, 2018)
ADC                1 pJ          8-bit SAR converters at a Walden figure of merit of a few fJ per
                                 conversion step (B. Murmann, "ADC Performance Survey")
DAC                0.5 pJ        half an ADC conversion (order of magnitude)
random bit         2.9 pJ        CMOS true random number generator, 2.4 Gb/s at 7 mW (S. Mathew et al.,
                                 IEEE JSSC 47(11), 2012)
=================  ============  ======================================================================
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from unigrad.core.cost import Counts
from unigrad.core.errors import UnigradError
from unigrad.core.options import check_int, check_number

OPERATIONS = ("analog_macs", "digital_macs", "reads", "writes", "adc", "dac", "random_bits", "mvms")


@dataclass
class OpCounts(Counts):
    """How many of each operation a device (or a learner) did; add counts with ``+`` or ``+=``."""

    analog_macs: int = 0
    digital_macs: int = 0
    reads: int = 0
    writes: int = 0
    adc: int = 0
    dac: int = 0
    random_bits: int = 0
    mvms: int = 0

    def __sub__(self, other: OpCounts) -> OpCounts:
        return OpCounts(*(getattr(self, f) - getattr(other, f) for f in OPERATIONS))

    def copy(self) -> OpCounts:
        return OpCounts(**asdict(self))

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class EnergyModel:
    """Energy per operation in joules (defaults and their sources in the module docs)."""

    digital_mac: float = 4.6e-12
    analog_mac: float = 10e-15
    read: float = 0.1e-12
    write: float = 10e-12
    adc: float = 1e-12
    dac: float = 0.5e-12
    random_bit: float = 2.9e-12

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not (isinstance(value, int | float) and value >= 0 and value == value and value != float("inf")):
                raise UnigradError(f"energy per {f.name} must be a finite number of joules >= 0, got {value!r}")

    def breakdown(self, counts: OpCounts) -> dict[str, float]:
        """Joules spent on each kind of operation."""
        return {
            "analog_macs": counts.analog_macs * self.analog_mac,
            "digital_macs": counts.digital_macs * self.digital_mac,
            "reads": counts.reads * self.read,
            "writes": counts.writes * self.write,
            "adc": counts.adc * self.adc,
            "dac": counts.dac * self.dac,
            "random_bits": counts.random_bits * self.random_bit,
        }

    def energy(self, counts: OpCounts) -> float:
        """Total joules for ``counts``."""
        return sum(self.breakdown(counts).values())


@dataclass(frozen=True)
class LatencyModel:
    """Seconds per operation and how many of each run at once; ``latency(counts)`` is the time they take.

    ``latency = mvms·t_mvm + Σ_op count_op·t_op / parallel_op`` over ADC and DAC conversions, writes, digital
    MACs and random bits (the analog MACs and column reads happen inside a matrix–vector product). Defaults
    (assumptions of the same order-of-magnitude kind as :class:`EnergyModel`, set your device's): an array
    product settles and is sensed in 100 ns; 8 ADCs per array at 10 ns per conversion; 64 DACs at 1 ns; writes a
    row at a time (128 cells per 100 ns pulse); 256 digital MACs per ns-cycle; random bits at 2.4 Gb/s (the TRNG of
    :class:`EnergyModel`'s source).
    """

    mvm: float = 100e-9
    adc: float = 10e-9
    adc_parallel: int = 8
    dac: float = 1e-9
    dac_parallel: int = 64
    write: float = 100e-9
    write_parallel: int = 128
    digital_mac: float = 1e-9
    digital_parallel: int = 256
    random_bit: float = 1 / 2.4e9

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("parallel"):
                check_int(f.name, value, low=1, subject=f"latency option {f.name}")
            else:
                check_number(
                    f.name, value, low=0, what="a finite number of seconds >= 0", subject=f"latency per {f.name}"
                )

    def latency(self, counts: OpCounts) -> float:
        """Seconds the operations in ``counts`` take, run one after another at the stated parallelism."""
        return (
            counts.mvms * self.mvm
            + counts.adc * self.adc / self.adc_parallel
            + counts.dac * self.dac / self.dac_parallel
            + counts.writes * self.write / self.write_parallel
            + counts.digital_macs * self.digital_mac / self.digital_parallel
            + counts.random_bits * self.random_bit
        )

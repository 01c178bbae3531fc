"""Operation counts add up and turn into energy with the per-operation figures."""

from __future__ import annotations

import math

import pytest

from unigrad import UnigradError
from unigrad.hardware.energy import EnergyModel, OpCounts


def test_counts_add_and_subtract() -> None:
    a, b = OpCounts(analog_macs=3, writes=2), OpCounts(analog_macs=1, adc=5, random_bits=7)
    assert (a + b).to_dict() == {
        "analog_macs": 4,
        "digital_macs": 0,
        "reads": 0,
        "writes": 2,
        "adc": 5,
        "dac": 0,
        "random_bits": 7,
        "mvms": 0,
    }
    assert (a + b - b) == a
    a += b
    assert a.adc == 5


def test_energy_is_the_sum_of_counts_times_energies() -> None:
    model = EnergyModel(digital_mac=2.0, analog_mac=1.0, read=0.5, write=10.0, adc=3.0, dac=4.0, random_bit=0.25)
    counts = OpCounts(analog_macs=2, digital_macs=1, reads=4, writes=1, adc=1, dac=1, random_bits=8)
    parts = model.breakdown(counts)  # small integers times binary fractions: every sum and product is exact, so ==
    assert parts["writes"] == 10.0 and parts["random_bits"] == 2.0
    assert model.energy(counts) == 2 + 2 + 2 + 10 + 3 + 4 + 2


def test_defaults_are_in_a_plausible_order() -> None:
    m = EnergyModel()
    assert m.analog_mac < m.digital_mac and m.adc < m.write
    with pytest.raises(UnigradError, match="write"):
        EnergyModel(write=-1.0)


def test_latency_counts_products_and_shares_converters() -> None:
    from unigrad.hardware.energy import LatencyModel

    m = LatencyModel(
        mvm=1.0,
        adc=2.0,
        adc_parallel=4,
        dac=1.0,
        dac_parallel=2,
        write=3.0,
        write_parallel=3,
        digital_mac=1.0,
        digital_parallel=10,
        random_bit=0.5,
    )
    c = OpCounts(analog_macs=10**6, reads=10**6, mvms=2, adc=8, dac=4, writes=6, digital_macs=20, random_bits=2)
    # exact: each term (count × time) / parallelism is a whole number (8·2/4, 4·1/2, 6·3/3, 20·1/10), 2·0.5 = 1
    assert m.latency(c) == 2 + 4 + 2 + 6 + 2 + 1  # analog MACs and reads happen inside the products
    with pytest.raises(UnigradError, match="adc_parallel"):
        LatencyModel(adc_parallel=0)


@pytest.mark.parametrize("value", [True, -1.0, math.nan, math.inf, "1e-9", None])
def test_latency_per_operation_refuses_bools_and_non_finite_numbers(value):
    from unigrad.hardware.energy import LatencyModel

    # True was taken as 1 second per MVM before; a flag is not a time
    message = rf"^latency per mvm must be a finite number of seconds >= 0, got {value!r}$"
    with pytest.raises(UnigradError, match=message):
        LatencyModel(mvm=value)

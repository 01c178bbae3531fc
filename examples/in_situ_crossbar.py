"""Train a simulated noisy, mismatched crossbar in place, against backprop trained on its ideal twin and deployed.

    .venv/bin/python examples/in_situ_crossbar.py

The device (:class:`unigrad.hardware.CrossbarMLP`, 64-32-10 on scikit-learn's digits) has a 30% per-cell gain
mismatch, programming error of 15% of the weight range, read noise, 8-bit converters and node noise of its own.
Backprop on the digital twin never sees any of that and loses accuracy when its weights are programmed into the
device; in-situ ANP injects nothing, learns from the difference between two noisy passes of the device, and
corrects the device's errors as it goes. Both runs report the accuracy measured on the device and the training
energy under the default per-operation energies (``docs/hardware.md``).
"""

from __future__ import annotations

from unigrad.data.digits import load_digits
from unigrad.hardware import CrossbarConfig, CrossbarMLP
from unigrad.hardware.train import train_device
from unigrad.noise import WhiteGaussian


def make_device() -> CrossbarMLP:
    config = CrossbarConfig(program_noise=0.15, mismatch=0.3, read_noise=0.01, adc_bits=8, dac_bits=8, input_range=2.0)
    return CrossbarMLP([64, 32, 10], config, node_noise=WhiteGaussian(0.05, accessible=False), activation_bits=8)


def main(steps: int = 1500) -> dict[str, float]:
    data = load_digits()
    out = {}
    for mode in ("deployed-backprop", "in-situ-anp"):
        run = train_device(make_device, mode, data, steps=steps, eval_every=steps, lr=3e-3)
        out[mode] = run.final["accuracy"]
        accuracy, joules = run.final["accuracy"], run.final["energy"]
        print(f"{mode:18s} accuracy on the device {accuracy:.3f}, training energy {joules:.2e} J")
    return out


if __name__ == "__main__":
    main()

"""The fine-tuning table of ``docs/finetuning.md``: ``unigrad experiment finetune`` cut to what 2 CPU cores finish.

Every method once (seed 0) on k16 and k512 with the random-init control, then the seeds and the full set for the
methods that decide the goals, then the report of everything in the folder. Each step trains only what the folder
lacks (the experiment writes each run as it ends), so an interrupted run resumes where it stopped.

    .venv/bin/python benchmarks/finetune_table.py [--out benchmarks/results/finetune] [--jobs 2]

About 3 hours of two busy cores. Needs ``unigrad[finetune]``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from unigrad.experiments import finetune

CORE = (
    "linear probe (backprop, head)",
    "backprop + Adam",
    "mezo + SGD",
    "mezo + SGD, lr 1e-4",
    "mezo + Adam",
    "anp (Linear) + Adam",
    "np (Linear) + Adam",
)
"""Three seeds at k512: the baselines, MeZO and the best backward-free methods of seed 0."""
FULL = (*CORE[:3], *CORE[4:], "kfac (Linear layers)", "mezo, LoRA r=8 + SGD")
"""The methods run on the full training set (one seed)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/finetune"))
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()

    def say(message: str) -> None:
        print(time.strftime("%H:%M:%S"), message, flush=True)

    common = {"jobs": args.jobs, "progress": say}
    finetune.run(args.out, seeds=1, splits=("k16", "k512"), **common)  # every method, seed 0, + the control
    finetune.run(args.out, seeds=3, splits=("k512",), methods=CORE, scratch=False, **common)
    finetune.run(args.out, seeds=2, splits=("k512",), methods=("backprop + Adam", "mezo + SGD"), **common)
    finetune.run(args.out, seeds=1, splits=("full",), methods=FULL, scratch=False, **common)
    finetune.run(args.out, seeds=3, splits=("k16", "k512", "full"), report_only=True, progress=say)
    print((args.out / "report.md").read_text())


if __name__ == "__main__":
    main()

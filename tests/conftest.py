"""Test-suite settings: pytest runs two worker processes on two cores, so each uses one torch thread
unless ``OMP_NUM_THREADS`` asks for more (the suite is checked with 1 and with 2 threads); the
experiment store of CLI runs goes to a temporary folder (never the working copy's ``runs/``)."""

import os
import tempfile

import torch

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ["UNIGRAD_STORE"] = os.path.join(tempfile.mkdtemp(prefix="unigrad-test-store-"), "unigrad.sqlite")
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 1))

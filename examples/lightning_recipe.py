"""Train with any unigrad estimator inside PyTorch Lightning: manual optimization, no adapter.

    pip install 'unigrad[lightning]'
    .venv/bin/python examples/lightning_recipe.py

A ``LightningModule`` sets ``automatic_optimization = False``, so Lightning calls no ``backward()``; its
``training_step`` asks the estimator for a direction (written into ``.grad``, as a backward pass would) and
steps the optimizer Lightning hands it. Everything else (data loading, epochs, callbacks, loggers,
checkpoints of the module) stays Lightning's. The estimator's state (the step counter that keys its noise)
goes into Lightning's checkpoints through ``on_save_checkpoint``/``on_load_checkpoint``.

Here MeZO (2 forward passes per probe, no backward) fits a small MLP to a synthetic 3-class problem.
"""

from __future__ import annotations

import tempfile
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import unigrad

try:
    import pytorch_lightning as pl
except ImportError as e:  # a one-line error naming the extra
    raise SystemExit(f"error: this recipe needs pytorch-lightning ({e}); pip install 'unigrad[lightning]'") from None


class EstimatorModule(pl.LightningModule):
    """A ``LightningModule`` that trains ``model`` with ``estimator`` instead of backprop.

    Args:
        model: the network; ``model(x)`` returns logits.
        estimator: any unigrad estimator that writes ``.grad`` (``unigrad.make_estimator("mezo", ...)``).
        lr: the SGD learning rate (the step is ``θ ← θ − lr·d`` with ``d`` the estimate).
    """

    def __init__(self, model: nn.Module, estimator: unigrad.Estimator, lr: float) -> None:
        super().__init__()
        self.automatic_optimization = False  # the estimator writes .grad; Lightning calls no backward()
        self.model = model
        self.estimator = estimator
        self.lr = lr
        self.forward_equivalents = 0.0

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        optimizer = self.optimizers()
        optimizer.zero_grad()
        estimate = self.estimator.estimate(self.model, unigrad.supervised(F.cross_entropy, x, y))  # writes .grad
        optimizer.step()
        self.forward_equivalents += estimate.cost.forward_equivalents
        self.log("train_loss", estimate.loss, prog_bar=True)
        self.log("forward_equivalents", self.forward_equivalents)
        return torch.tensor(estimate.loss)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.model.parameters(), lr=self.lr)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["unigrad_estimator"] = self.estimator.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.estimator.load_state_dict(checkpoint["unigrad_estimator"])


def synthetic(n: int = 512, features: int = 10, classes: int = 3, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Gaussian inputs labelled by the largest of ``classes`` fixed random projections."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    return x, (x @ torch.randn(features, classes, generator=g)).argmax(dim=1)


@torch.no_grad()
def loss_of(model: nn.Module, x: Tensor, y: Tensor) -> float:
    return float(F.cross_entropy(model(x), y))


def main(epochs: int = 25, lr: float = 0.1, probes: int = 8, threads: int = 1) -> tuple[float, float]:
    """MeZO-SGD on the synthetic problem for ``epochs`` epochs of batch 64; the training loss before and after."""
    torch.set_num_threads(threads)
    x, y = synthetic()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 3))
    module = EstimatorModule(model, unigrad.make_estimator("mezo", probes=probes, sigma=1e-3, seed=0), lr)
    loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
    before = loss_of(model, x, y)
    print(f"loss before: {before:.4f}")
    with tempfile.TemporaryDirectory() as root, warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")  # a tiny in-memory data set
        warnings.filterwarnings("ignore", ".*LeafSpec.*is deprecated.*")  # Lightning's own use of torch's pytree
        trainer = pl.Trainer(
            max_epochs=epochs,
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=root,
        )
        trainer.fit(module, loader)
    after = loss_of(model, x, y)
    fe = module.forward_equivalents
    print(f"loss after {trainer.global_step} MeZO steps: {after:.4f}  ({fe:,.0f} forward-pass equivalents)")
    return before, after


if __name__ == "__main__":
    try:
        main()
    except unigrad.UnigradError as e:
        raise SystemExit(f"error: {e}") from None

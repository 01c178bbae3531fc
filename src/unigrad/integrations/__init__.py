"""Other libraries' training loops driven by unigrad estimators.

* :mod:`unigrad.integrations.huggingface`: :class:`~unigrad.integrations.huggingface.UnigradTrainer`, a
  ``transformers.Trainer`` whose backward pass is any unigrad estimator (``pip install 'unigrad[finetune]'``).
* PyTorch Lightning needs no adapter: a ``LightningModule`` with manual optimization calls
  ``estimator.estimate(...)`` and ``opt.step()`` (``examples/lightning_recipe.py``, ``docs/integrations.md``).

Nothing here is imported with ``unigrad``; ``UnigradTrainer`` imports ``transformers`` when first asked for.
"""

from __future__ import annotations

from typing import Any

__all__ = ["UnigradTrainer"]


def __getattr__(name: str) -> Any:
    if name == "UnigradTrainer":
        from unigrad.integrations.huggingface import UnigradTrainer

        return UnigradTrainer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

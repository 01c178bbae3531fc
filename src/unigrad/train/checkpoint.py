"""Atomic, checksummed checkpoint files.

A checkpoint is one file::

    b"UNIGRAD-CHECKPOINT 1\\n" + sha256(payload) (32 bytes) + payload

where ``payload`` is a ``torch.save`` of a dict of tensors, numbers, strings, lists and dicts (the
trainer's state: model, optimizer, estimator, data position, metrics). Guarantees:

* **Atomic**: :func:`save_checkpoint` writes a temporary file next to the target, flushes and
  ``fsync``s it, then ``os.replace``s it over the target and ``fsync``s the folder
  (:func:`unigrad.core.io.atomic_write`). A crash at any moment leaves either the previous checkpoint
  or the new one, never a partial file.
* **Checked**: :func:`load_checkpoint` refuses a file without the header (not a checkpoint) or whose
  payload does not match its checksum (truncated or corrupted), with a one-line
  :class:`~unigrad.core.errors.UnigradError` that names the file. It loads with
  ``torch.load(weights_only=True)``, so a checkpoint cannot run code.
* **Nothing lost on a failed write**: if writing fails (read-only folder, full disk), the temporary
  file is removed, the previous checkpoint is untouched, and the error says so.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import torch

from unigrad.core.errors import UnigradError
from unigrad.core.io import atomic_write

MAGIC = b"UNIGRAD-CHECKPOINT 1\n"
_ADVICE = "delete it to start the run over"
_DIGEST = 32


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (module docstring)."""
    path = Path(path)
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    atomic_write(
        path,
        MAGIC + hashlib.sha256(payload).digest() + payload,
        fsync=True,
        fsync_folder=True,
        make_parents=True,
        what="checkpoint",
    )


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, verifying its header and checksum."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UnigradError(f"checkpoint {path} does not exist") from None
    except OSError as e:
        raise UnigradError(f"cannot read checkpoint {path}: {e.strerror or e}") from None
    if not data.startswith(MAGIC):
        raise UnigradError(f"{path} is not a unigrad checkpoint (bad header); refusing to load it; {_ADVICE}")
    digest, payload = data[len(MAGIC) : len(MAGIC) + _DIGEST], data[len(MAGIC) + _DIGEST :]
    if hashlib.sha256(payload).digest() != digest:
        raise UnigradError(f"checkpoint {path} is corrupted (checksum mismatch); refusing to load it; {_ADVICE}")
    try:
        state = torch.load(io.BytesIO(payload), weights_only=True)
    except Exception as e:  # the checksum matched, so this is a file from an incompatible version
        raise UnigradError(f"checkpoint {path} cannot be read by this version: {type(e).__name__}; {_ADVICE}") from None
    if not isinstance(state, dict):
        raise UnigradError(f"checkpoint {path} does not hold a state dict; {_ADVICE}")
    return state

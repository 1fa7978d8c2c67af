"""Crash-safe checkpoints of a running pipeline, for ``--resume``.

A run with an output directory ``OUT`` keeps its checkpoints in the sibling work directory
``.OUT.work/`` (only while training passes run; it is removed when the artifacts are written).
A checkpoint is written to a temporary file and renamed, so a run killed at any moment (even
with SIGKILL) leaves either the previous or the new checkpoint, never a torn one. It records
a fingerprint of the recipe, the model source and a caller's distillation teacher: resuming
with a different recipe, model or teacher is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from .errors import CompressorError

__all__ = ["CHECKPOINT_FILE", "work_dir_for", "fingerprint", "save_checkpoint", "load_checkpoint", "has_checkpoint", "remove_work_dir"]

CHECKPOINT_FILE = "checkpoint.pt"


def work_dir_for(out: Path) -> Path:
    """The work directory of a run writing to ``out``."""
    out = Path(out)
    return out.parent / f".{out.name}.work"


def fingerprint(recipe_yaml: str, source: dict, teacher: torch.nn.Module | None = None) -> str:
    """Identifies a run: the resolved recipe, where the model came from and, when the caller
    gave one, the teacher's weights (a run without one fingerprints as before)."""
    digest = hashlib.sha256((recipe_yaml + "\n" + json.dumps(source, sort_keys=True)).encode())
    if teacher is not None:
        digest.update(b"\nteacher\n" + state_digest(teacher).encode())
    return digest.hexdigest()[:16]


def state_digest(module: torch.nn.Module) -> str:
    """SHA-256 of a module's state dict: names, dtypes, shapes and values."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous().reshape(-1)  # 1-D: 0-dim tensors cannot change dtype size
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}\n".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def has_checkpoint(work_dir: Path) -> bool:
    return (Path(work_dir) / CHECKPOINT_FILE).is_file()


def save_checkpoint(work_dir: Path, payload: dict) -> None:
    """Atomically replace the checkpoint in ``work_dir``."""
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=work_dir, prefix=".checkpoint.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, work_dir / CHECKPOINT_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(work_dir: Path, expected_fingerprint: str) -> dict:
    """The checkpoint to resume from; errors if there is none or it belongs to another run."""
    path = Path(work_dir) / CHECKPOINT_FILE
    if not path.is_file():
        raise CompressorError(f"--resume: no checkpoint at {path}; run without --resume to start")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("fingerprint") != expected_fingerprint:
        raise CompressorError(
            f"--resume: the checkpoint at {path} was made with a different recipe, model or teacher; "
            "resume with the same ones, or run without --resume (with --force) to start over"
        )
    return payload


def remove_work_dir(work_dir: Path | None) -> None:
    if work_dir is not None and Path(work_dir).exists():
        shutil.rmtree(work_dir, ignore_errors=True)

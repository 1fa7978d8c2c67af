"""Crash-safe checkpoints of a running pipeline, for ``--resume``.

A run with an output directory ``OUT`` keeps its checkpoints in the sibling work directory
``.OUT.work/`` (only while training passes run; it is removed when the artifacts are written).
A checkpoint is written to a temporary file and renamed, so a run killed at any moment (even
with SIGKILL) leaves either the previous or the new checkpoint, never a torn one. It records
a fingerprint of the recipe, the model source, the contents of every input file (checkpoint,
corpus, model directory) and a caller's distillation teacher: resuming with a different recipe,
model, input or teacher is refused.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch

from .errors import CompressorError
from .outputs import atomic_file

__all__ = ["CHECKPOINT_FILE", "work_dir_for", "fingerprint", "file_digest", "save_checkpoint", "load_checkpoint", "has_checkpoint", "remove_work_dir"]

CHECKPOINT_FILE = "checkpoint.pt"


def work_dir_for(out: Path) -> Path:
    """The work directory of a run writing to ``out``."""
    out = Path(out)
    return out.parent / f".{out.name}.work"


def fingerprint(recipe_yaml: str, source: dict, teacher: torch.nn.Module | None = None,
                files: list[Path] | tuple[Path, ...] = ()) -> str:
    """Identifies a run: the resolved recipe, where the model came from, the contents of the
    input ``files`` (checkpoint, corpus, model directory: a changed weights file is another run,
    whatever its name) and, when the caller gave one, the teacher's weights."""
    digest = hashlib.sha256((recipe_yaml + "\n" + json.dumps(source, sort_keys=True)).encode())
    for path in sorted({Path(p).resolve() for p in files}):
        digest.update(f"\nfile {path}\n".encode() + file_digest(path).encode())
    if teacher is not None:
        digest.update(b"\nteacher\n" + state_digest(teacher).encode())
    return digest.hexdigest()[:16]


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes; of a folder, of its regular files (not recursive: a model
    directory is flat), by name."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    for item in files:
        digest.update(item.name.encode() + b"\0")
        with open(item, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


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
    with atomic_file(work_dir / CHECKPOINT_FILE) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(work_dir: Path, expected_fingerprint: str) -> dict:
    """The checkpoint to resume from; errors if there is none or it belongs to another run."""
    path = Path(work_dir) / CHECKPOINT_FILE
    if not path.is_file():
        raise CompressorError(f"--resume: no checkpoint at {path}; run without --resume to start")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, foreign, or pickled objects the weights-only reader refuses
        reason = " ".join(str(exc).split())[:160]
        raise CompressorError(f"--resume: {path} is not a readable checkpoint of this toolkit ({type(exc).__name__}: "
                              f"{reason}); run without --resume (with --force) to start over") from None
    if not isinstance(payload, dict) or payload.get("fingerprint") != expected_fingerprint:
        raise CompressorError(
            f"--resume: the checkpoint at {path} was made with a different recipe, model or teacher; "
            "resume with the same ones, or run without --resume (with --force) to start over"
        )
    return payload


def remove_work_dir(work_dir: Path | None) -> None:
    if work_dir is not None and Path(work_dir).exists():
        shutil.rmtree(work_dir, ignore_errors=True)

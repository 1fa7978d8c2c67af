"""Artifact directories: written atomically, loaded back without re-running anything.

Layout of ``DIR``:

- ``model.safetensors``: the compressed weights (pruned entries are zeros), each mask as a
  bool tensor under ``__mask__.<parameter name>``, and in the metadata a JSON record of how
  to rebuild the architecture, each layer's pattern, and tied parameter names;
- ``recipe.resolved.yaml``: the recipe with every default filled in;
- ``report.json``: the per-layer report (:class:`compressor.report.Report`);
- ``module.pt``: only for models that were loaded as pickled modules.

Everything is written to a temporary sibling directory and renamed into place, so a failure
leaves no half-written artifact; an existing directory is replaced only with ``force``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn as nn

from .errors import ArtifactError
from .loading import apply_state_dict, rebuild_model
from .masks import set_mask
from .swaps import replay
from .report import Report

__all__ = ["FORMAT_VERSION", "MASK_PREFIX", "atomic_directory", "save_artifacts", "load", "load_masks", "read_report", "read_metadata"]

FORMAT_VERSION = 1
MASK_PREFIX = "__mask__."
WEIGHTS = "model.safetensors"


def check_output_dir(out: Path, force: bool) -> None:
    """Refuse an existing output directory unless ``force``; called before any work starts."""
    if out.exists() and not force:
        raise ArtifactError(f"output directory {out} exists; choose another --out or pass --force to replace it")
    if out.exists() and not out.is_dir():
        raise ArtifactError(f"output path {out} exists and is not a directory")


@contextmanager
def atomic_directory(out: Path, force: bool = False):
    """Yield a temporary directory that becomes ``out`` only if the block succeeds."""
    out = Path(out)
    check_output_dir(out, force)
    made = [p for p in (out.parent, *out.parent.parents) if not p.exists()]  # folders this call creates
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        yield tmp
        _default_permissions(tmp)
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
            os.replace(out, old / "x")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in made:  # innermost first: a failure leaves no empty runs/ behind either
            try:
                folder.rmdir()
            except OSError:
                break
        raise


def _default_permissions(directory: Path) -> None:
    """mkdtemp and some writers create owner-only files; give the artifact the usual umask modes."""
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)
    for path in directory.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def _dedupe_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """State dict without tied duplicates (safetensors refuses shared storage), plus alias -> kept name."""
    state, tied, seen = {}, {}, {}
    for name, tensor in model.state_dict(keep_vars=False).items():
        key = (tensor.data_ptr(), tuple(tensor.shape), tensor.dtype) if tensor.numel() else None
        if key is not None and key in seen:
            tied[name] = seen[key]
            continue
        if key is not None:
            seen[key] = name
        state[name] = tensor.detach().contiguous().clone()
    return state, tied


def save_artifacts(
    out: str | Path,
    model: nn.Module,
    masks: dict[str, torch.Tensor],
    source: dict,
    patterns: dict[str, dict],
    recipe_yaml: str,
    report: Report,
    force: bool = False,
    extra: dict[str, Callable[[Path], None]] | None = None,
    replacements: list[dict] | None = None,
    inputs: list[dict] | None = None,
) -> Path:
    """Write an artifact directory atomically. ``extra`` maps file names to writer callables."""
    from safetensors.torch import save_file

    out = Path(out)
    with atomic_directory(out, force) as tmp:
        state, tied = _dedupe_state(model)
        for name, mask in masks.items():
            state[MASK_PREFIX + name] = mask.detach().to(torch.bool).contiguous().cpu()
        meta = {"format": FORMAT_VERSION, "source": source, "tied": tied, "patterns": patterns,
                "replacements": list(replacements or []), "inputs": list(inputs or [])}
        save_file(state, str(tmp / WEIGHTS), metadata={"compressor": json.dumps(meta)})
        (tmp / "recipe.resolved.yaml").write_text(recipe_yaml, encoding="utf-8")
        if source.get("kind") == "pickle":
            torch.save(model, tmp / "module.pt")
        for name, writer in (extra or {}).items():
            writer(tmp / name)  # may add figures to the report (ONNX errors), so it is written last
        (tmp / "report.json").write_text(report.to_json() + "\n", encoding="utf-8")
    return out


def _read(directory: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(directory) / WEIGHTS
    if not path.is_file():
        raise ArtifactError(f"{directory} is not a compressor artifact: {WEIGHTS} is missing")
    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = (fh.metadata() or {}).get("compressor")
    except Exception as exc:  # safetensors raises its own error type for a truncated or foreign file
        raise ArtifactError(f"{path} is not a readable safetensors file ({exc}); the artifact is damaged") from None
    if raw is None:
        raise ArtifactError(f"{path} has no compressor metadata")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path}: the compressor metadata is not JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise ArtifactError(f"{path}: artifact format {found} is not supported (expected {FORMAT_VERSION})")
    try:
        return meta, load_file(str(path))
    except Exception as exc:
        raise ArtifactError(f"{path}: the tensors cannot be read ({exc}); the artifact is damaged") from None


def load_masks(directory: str | Path) -> dict[str, torch.Tensor]:
    """The masks saved in an artifact, by parameter name."""
    _, state = _read(Path(directory))
    return {k[len(MASK_PREFIX):]: v for k, v in state.items() if k.startswith(MASK_PREFIX)}


def load(directory: str | Path, allow_pickle: bool = False, with_masks: bool = False) -> nn.Module:
    """Rebuild the compressed model of an artifact directory, in eval mode.

    Its outputs equal those of the in-memory model the pipeline produced. With
    ``with_masks`` the masks are re-installed as parametrizations (for further fine-tuning);
    otherwise the model is plain, with the pruned weights stored as zeros. Sparse kernel
    modules the pipeline installed (``swap_kernels``) are rebuilt from the weights and masks;
    structural replacements (``dynamic_gate``'s gated modules, which hold parameters of their own)
    are rebuilt as fresh modules before the saved state is loaded into them.
    """
    directory = Path(directory)
    meta, state = _read(directory)
    masks = {k[len(MASK_PREFIX):]: state.pop(k) for k in list(state) if k.startswith(MASK_PREFIX)}
    for alias, kept in meta.get("tied", {}).items():
        state[alias] = state[kept]
    model = rebuild_model(meta["source"], allow_pickle=allow_pickle, directory=directory)
    replacements = meta.get("replacements", [])
    # structural replacements (gated modules) add parameters: rebuild them before loading the state
    replay(model, replacements, masks, structural=True)
    apply_state_dict(model, state, str(directory / WEIGHTS))
    if with_masks:
        if any(not r.get("structural") for r in replacements):
            raise ArtifactError(f"{directory} has sparse kernel modules installed; load it without with_masks")
        for name, mask in masks.items():
            set_mask(model, name, mask)
    replay(model, replacements, masks)
    model.eval()
    return model


def read_metadata(directory: str | Path) -> dict:
    """The artifact's metadata record (source, patterns, replacements, example input specs, ...)."""
    return _read(Path(directory))[0]


def read_report(directory: str | Path) -> Report:
    """The report.json of an artifact directory."""
    path = Path(directory) / "report.json"
    if not path.is_file():
        raise ArtifactError(f"{directory} is not a compressor artifact: report.json is missing")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path} is not JSON ({exc})") from None
    try:
        return Report.from_dict(data)
    except (KeyError, TypeError, AttributeError) as exc:
        raise ArtifactError(f"{path} is not a compressor report ({type(exc).__name__}: {exc})") from None

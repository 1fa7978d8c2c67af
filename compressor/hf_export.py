"""A compressed artifact back as a Hugging Face model directory (``compress export DIR --hf OUT``).

``OUT`` is what ``from_pretrained`` reads: the weights of the artifact as ``model.safetensors`` in
transformers' own layout (dense, the pruned entries zero; keys as ``save_pretrained`` of the
config's ``architectures`` class writes them, tied weights stored once; GPT-2's Conv1D weights,
which loading turned into ``nn.Linear``, back in their (in, out) layout; layers a kernel swap
replaced as their dense weight), next to every other file of the directory the model came from,
copied unchanged: ``config.json``, the tokenizer, sentence-transformers' ``modules.json``,
``1_Pooling/`` and ``sentence_bert_config.json``, the README, ... (everything
:func:`compressor.loading.hf_companion_files` lists: the model's own weight files, in any framework,
and other runtimes' exports such as ``onnx/`` are left out).

The artifact records that directory and a digest of each of those files: a directory that is gone
or changed since is refused in one line, or the caller names one with ``source`` (``--source``),
whose ``config.json`` must still describe the artifact's model. Before ``OUT`` is put in place the
written directory is loaded back with ``from_pretrained`` (no missing, unexpected or mismatched
key) and its outputs are compared with the artifact's model on the artifact's example inputs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from .errors import ArtifactError, CompressorError, short
from .export import fresh_inputs, max_errors

__all__ = ["export_hf"]

#: config keys that say nothing about the model (the writing library's version, the path it was read from)
_CONFIG_NOISE = ("transformers_version", "_name_or_path")


def export_hf(directory: str | Path, out: str | Path, source: str | Path | None = None, force: bool = False,
              tolerance: float = 1e-4) -> dict:
    """Write the artifact ``directory`` as a Hugging Face model directory ``out`` (module docstring).

    ``source``: the directory whose non-weight files are copied (default: the one the artifact was
    made from, which must be unchanged). ``out`` may not be, contain or lie inside the artifact or
    the source, and an existing ``out`` is replaced only with ``force``; it is written atomically.
    Returns what was written: ``{"out", "class", "weights", "files", "zeros", "max_abs_error",
    "max_rel_error"}`` (the errors of the reloaded model's outputs against the artifact's, relative
    to the output scale; ``tolerance`` bounds the relative one).
    """
    from .artifacts import _header, _read, load, replacements_of
    from .loading import hf_companion_files, hf_quiet
    from .outputs import atomic_directory, check_output

    directory, out = Path(directory), Path(out)
    path, meta, _ = _header(directory)
    kind = meta["source"]["kind"]
    if kind != "hf":
        raise ArtifactError(f"{directory} was not made from a Hugging Face model directory (its source is a {kind} "
                            "model); --hf exports only those (compress export DIR writes ONNX for any artifact)")
    gated = sorted(r.module for r in replacements_of(meta) if r.structural)
    if gated:
        raise ArtifactError(f"{directory} has input-dependent gated layers ({', '.join(gated[:3])}{' ...' if len(gated) > 3 else ''}; "
                            "dynamic_gate), which no Hugging Face class can hold; --hf exports pruned weights only")
    src = _source_directory(meta["source"], source, directory)
    check_output(out, force, [directory, src], option="--hf")  # before anything is read or built
    _transformers()

    reference = load(directory)  # the artifact's model (every check of the loader), the outputs to match
    _, state, masks, _ = _read(directory)
    for alias, kept in meta.get("tied", {}).items():
        state[alias] = state[kept]
    config = meta["source"].get("config") or {}
    model = _hf_model(config, state, path)
    cls = type(model)
    files = hf_companion_files(src)
    with atomic_directory(out, force, [directory, src], option="--hf") as tmp:
        scratch = tmp / ".save_pretrained"
        with hf_quiet(info=False):
            model.save_pretrained(scratch)
        weights = sorted(p.name for p in scratch.iterdir() if p.name.endswith((".safetensors", ".index.json")))
        for name in weights:
            (scratch / name).replace(tmp / name)
        shutil.rmtree(scratch)
        for name in files:  # config.json and the tokenizer as they are in the source (its config is checked above)
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / name, tmp / name)
        worst_abs, worst_rel = _check_reload(cls, tmp, reference, meta.get("inputs", []), tolerance)
    zeros = {name: int((~mask).sum()) for name, mask in masks.items()}
    return {"out": str(out), "class": cls.__name__, "weights": weights, "files": files, "zeros": zeros,
            "max_abs_error": worst_abs, "max_rel_error": worst_rel}


def _transformers():
    try:
        import transformers
    except ImportError:
        raise CompressorError("--hf needs transformers; pip install 'compressor[hf]'") from None
    return transformers


def _source_directory(record: dict, given: str | Path | None, directory: Path) -> Path:
    """The directory whose files are copied: ``given``, or the recorded one if it is unchanged."""
    from .loading import hf_file_digests

    if given is not None:
        src = Path(given)
        if not (src / "config.json").is_file():
            raise ArtifactError(f"--source {src}: not a Hugging Face model directory (no config.json)")
        _check_config(record.get("config") or {}, src)
        return src
    recorded = record.get("directory")
    if not recorded:
        raise ArtifactError(f"{directory} does not record the directory its model came from; name it with --source DIR")
    src = Path(recorded)
    if not (src / "config.json").is_file():
        raise ArtifactError(f"the directory {src} that {directory} was made from is gone (no config.json there); "
                            "name the model's directory with --source DIR")
    digests = record.get("files")
    if digests is None:  # an artifact from before digests were recorded: the config is all there is to compare
        _check_config(record.get("config") or {}, src)
        return src
    now = hf_file_digests(src)
    changed = sorted(n for n in set(digests) | set(now) if digests.get(n) != now.get(n))
    if changed:
        what = ", ".join(f"{n} {'is new' if n not in digests else 'is gone' if n not in now else 'differs'}"
                         for n in changed[:4])
        raise ArtifactError(f"the directory {src} changed since {directory} was made ({what}"
                            f"{' ...' if len(changed) > 4 else ''}); name the directory to copy the files from with "
                            "--source DIR")
    return src


def _check_config(recorded: dict, src: Path) -> None:
    """``src``'s config.json must describe the artifact's model (every key but :data:`_CONFIG_NOISE`)."""
    transformers = _transformers()
    try:
        found = transformers.AutoConfig.from_pretrained(src, local_files_only=True, trust_remote_code=False).to_dict()
        found = json.loads(json.dumps(found, default=str))  # as the artifact holds it (JSON: id2label's keys are strings)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{src}/config.json cannot be read ({type(exc).__name__}: "
                            f"{' '.join(str(exc).split())[:160]})") from None
    keys = sorted(k for k in set(recorded) | set(found) if k not in _CONFIG_NOISE and recorded.get(k) != found.get(k))
    if keys:
        diff = ", ".join(f"{k}: {short(found.get(k), 30)} there, {short(recorded.get(k), 30)} in the artifact" for k in keys[:3])
        raise ArtifactError(f"{src}/config.json describes another model than the artifact ({diff}"
                            f"{' ...' if len(keys) > 3 else ''}); name the directory the model came from")


def _hf_model(config: dict, state: dict[str, torch.Tensor], path: Path) -> torch.nn.Module:
    """The config's class as transformers builds it, holding ``state`` (Conv1D weights transposed
    back); built on the meta device, so the state's tensors become the model's (cast to the dtypes
    the class builds where they differ)."""
    from .loading import apply_state_dict, conv1d_layout, rebuild_hf

    with torch.device("meta"):
        model = rebuild_hf(config, prepare=False)
    try:
        apply_state_dict(model, conv1d_layout(model, state), str(path), assign=True)
    except CompressorError as exc:
        raise ArtifactError(f"the artifact's weights do not fit {type(model).__name__}: {exc}") from None
    if callable(getattr(model, "tie_weights", None)):
        model.tie_weights()  # the state gave tied names equal tensors; make them one parameter again
    return model.eval()


def _check_reload(cls: type, tmp: Path, reference: torch.nn.Module, specs: list[dict],
                  tolerance: float) -> tuple[float, float]:
    """Load the written directory with ``cls.from_pretrained``: every key must match, and its outputs
    those of the artifact's model on fresh example inputs (ArtifactError otherwise)."""
    from .kernels import flatten_outputs
    from .loading import hf_quiet

    try:
        with hf_quiet(info=False):  # what it would warn about (missing or unexpected keys) is checked below
            reloaded, info = cls.from_pretrained(tmp, local_files_only=True, trust_remote_code=False,
                                                 output_loading_info=True)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:  # e.g. a config that the weights do not fit
        raise ArtifactError(f"{cls.__name__}.from_pretrained cannot load the written directory ({type(exc).__name__}: "
                            f"{' '.join(str(exc).split())[:200]}); nothing was written") from None
    problems = [f"{key.replace('_', ' ')}: {', '.join(sorted(map(str, info[key]))[:4])}"
                for key in ("missing_keys", "unexpected_keys", "mismatched_keys") if info.get(key)]
    if problems:
        raise ArtifactError(f"{cls.__name__}.from_pretrained does not read the written weights as written "
                            f"({'; '.join(problems)}); nothing was written")
    if getattr(reloaded.config, "use_cache", None):
        reloaded.config.use_cache = False  # as the toolkit runs it (a cache object is no tensor to compare)
    reloaded.eval()
    if not specs:
        return 0.0, 0.0
    inputs = fresh_inputs(specs, torch.Generator().manual_seed(0))  # the example's shapes, fresh token ids
    with torch.no_grad():
        expected = flatten_outputs(reference(*inputs))
        got = flatten_outputs(reloaded(*inputs))
    if len(got) != len(expected):
        raise ArtifactError(f"{cls.__name__} from the written directory returns {len(got)} outputs, the "
                            f"artifact's model {len(expected)}; nothing was written")
    worst_abs, worst_rel = max_errors(expected, [g.detach().double().numpy() for g in got])
    if not worst_rel <= tolerance:
        raise ArtifactError(f"{cls.__name__} from the written directory differs from the artifact's model: max abs "
                            f"error {worst_abs:.3g}, relative to the output scale {worst_rel:.3g} > tolerance "
                            f"{tolerance:g}; nothing was written")
    return worst_abs, worst_rel

"""Artifact directories: written atomically, loaded back without re-running anything.

Layout of ``DIR``:

- ``model.safetensors``: the compressed weights, and in the metadata a JSON record of how to
  rebuild the architecture, each layer's pattern, tied parameter names and, per masked weight,
  a versioned layout record: format 2 stores every masked weight packed in its pattern's
  sparse layout (:mod:`compressor.packing`; the mask is implied by the layout), unmasked
  tensors as they are. Format 1 (``save_artifacts(..., dense=True)``, ``compress export
  --dense``) stores dense weights with zeros plus each mask as a bool tensor
  ``__mask__.<parameter name>``; both load;
- ``recipe.resolved.yaml``: the recipe with every default filled in;
- ``report.json``: the per-layer report (:class:`compressor.report.Report`);
- ``module.pt``: only for models that were loaded as pickled modules.

Everything is written to a temporary sibling directory and renamed into place, so a failure
leaves no half-written artifact; an existing directory is replaced only with ``force``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Union

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from . import packing
from .errors import ArtifactError, CompressorError, ModelLoadError, short
from .loading import apply_state_dict, load_model, rebuild_hf
from .models import rebuild_builtin
from .masks import set_mask
from .outputs import atomic_directory, atomic_file
from .export import check_input_spec
from .swaps import Replacement, build_packed, kernel_request, replay, set_module
from .report import Report

__all__ = ["FORMAT_VERSION", "DENSE_FORMAT", "MASK_PREFIX", "save_artifacts", "load", "load_masks", "read_report",
           "read_metadata", "write_dense"]

FORMAT_VERSION = 2
#: the dense layout: weights with zeros plus ``__mask__.`` bool tensors (still written with ``dense``)
DENSE_FORMAT = 1
MASK_PREFIX = "__mask__."
#: packed weights may describe at most this many dense values per byte of the file (plus a floor),
#: so a tiny crafted file cannot make the loader allocate a huge dense tensor (99.9% sparse is ~250)
_EXPANSION_PER_BYTE = 1024
_EXPANSION_FLOOR = 1 << 24
_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                       "U8": torch.uint8, "BOOL": torch.bool}
WEIGHTS = "model.safetensors"
#: how an artifact says its architecture is rebuilt (never by importing code it names)
SOURCE_KINDS = ("builtin", "hf", "factory", "pickle")


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
    exported: Path | None = None,
    replacements: list[Replacement] | None = None,
    inputs: list[dict] | None = None,
    dense: bool = False,
) -> Path:
    """Write an artifact directory atomically. ``exported``: a folder whose files (an ONNX export
    made beforehand, in a :func:`compressor.outputs.scratch_directory` beside ``out``) move into it.

    Masked weights are stored packed (format 2); ``dense`` writes format 1 instead (dense weights
    with zeros plus bool masks) for tools that want plain tensors. ``replacements`` are stored as
    their JSON records (:meth:`Replacement.to_json`).
    """
    from safetensors.torch import save_file

    out = Path(out)
    with atomic_directory(out, force) as tmp:
        state, tied = _dedupe_state(model)
        meta = {"format": DENSE_FORMAT if dense else FORMAT_VERSION, "source": source, "tied": tied,
                "patterns": patterns, "replacements": [r.to_json() for r in replacements or []],
                "inputs": list(inputs or [])}
        if dense:
            for name, mask in masks.items():
                state[MASK_PREFIX + name] = mask.detach().to(torch.bool).contiguous().cpu()
        else:
            meta["layouts"], meta["masks"] = _pack_state(state, tied, masks, patterns), sorted(masks)
        save_file(state, str(tmp / WEIGHTS), metadata={"compressor": json.dumps(meta)})
        (tmp / "recipe.resolved.yaml").write_text(recipe_yaml, encoding="utf-8")
        if source.get("kind") == "pickle":
            torch.save(model, tmp / "module.pt")
        if exported is not None:
            for path in sorted(exported.iterdir()):
                path.replace(tmp / path.name)  # a rename: the scratch folder is a sibling of out
        (tmp / "report.json").write_text(report.to_json() + "\n", encoding="utf-8")
    return out


def _pack_state(state: dict[str, torch.Tensor], tied: dict[str, str], masks: dict[str, torch.Tensor],
                patterns: dict[str, dict]) -> dict[str, dict]:
    """Replace each masked weight of ``state`` by its packed parts; returns the layout records."""
    layouts = {}
    for name, mask in masks.items():
        kept = tied.get(name, name)  # a tied weight is packed once, under the name it is stored as
        if kept in layouts:
            continue
        if kept not in state:
            raise ArtifactError(f"mask {name!r} names no tensor of the model's state")
        pattern = patterns.get(name) or patterns.get(kept)
        try:
            record, parts = packing.pack(state.pop(kept), mask, pattern)
        except ValueError as exc:
            raise ArtifactError(f"{name}: cannot pack the weight ({exc})") from None
        layouts[kept] = record
        state.update({packing.part_key(kept, p): t.contiguous() for p, t in parts.items()})
    return layouts


def _header(directory: Path) -> tuple[Path, dict, dict[str, tuple[int, ...]]]:
    """The weights file, its checked metadata and the shapes of the weights it holds (packed
    weights by their layout's shape), read from the safetensors header alone (no tensor data is
    read or allocated)."""
    from safetensors import safe_open

    path = Path(directory) / WEIGHTS
    if not path.is_file():
        raise ArtifactError(f"{directory} is not a compressor artifact: {WEIGHTS} is missing")
    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = (fh.metadata() or {}).get("compressor")
            infos = {}
            for k in fh.keys():
                piece = fh.get_slice(k)
                infos[k] = (tuple(piece.get_shape()), _SAFETENSORS_DTYPES.get(piece.get_dtype()))
    except Exception as exc:  # safetensors raises its own error type for a truncated or foreign file
        raise ArtifactError(f"{path} is not a readable safetensors file ({_brief(exc)}); the artifact is damaged") from None
    if raw is None:
        raise ArtifactError(f"{path} has no compressor metadata")
    try:
        meta = json.loads(raw)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ArtifactError(f"{path}: the compressor metadata is not JSON ({_brief(exc)})") from None
    if not isinstance(meta, dict) or meta.get("format") not in (DENSE_FORMAT, FORMAT_VERSION):
        found = meta.get("format") if isinstance(meta, dict) else None
        raise ArtifactError(f"{path}: artifact format {short(found)} is not supported "
                            f"(expected {DENSE_FORMAT} or {FORMAT_VERSION})")
    try:
        shapes = _check_layouts(meta, infos)
        _check_metadata(meta, shapes)
    except ValueError as exc:
        raise ArtifactError(f"{path}: damaged metadata: {exc}") from None
    described = sum(packing.dense_numel(rec) for rec in meta.get("layouts", {}).values())
    if described > _EXPANSION_PER_BYTE * path.stat().st_size + _EXPANSION_FLOOR:
        raise ArtifactError(f"{path}: the layouts describe {described:,} dense values, far more than a file of "
                            f"{path.stat().st_size:,} bytes packs; the artifact is damaged (nothing was allocated)")
    return path, meta, shapes


def _check_layouts(meta: dict, infos: dict[str, tuple]) -> dict[str, tuple[int, ...]]:
    """Check every layout record and its parts' header shapes and dtypes (ValueError naming the
    tensor); returns the weights' shapes: plain tensors as stored, packed ones from their layout."""
    if meta["format"] == DENSE_FORMAT:
        return {k: shape for k, (shape, _) in infos.items()}
    layouts, names = meta.get("layouts"), meta.get("masks")
    if not isinstance(layouts, dict) or not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError("a format-2 artifact needs layouts (a mapping) and masks (a list of names)")
    shapes = {k: shape for k, (shape, _) in infos.items() if not k.startswith(packing.PREFIX)}
    for name, rec in layouts.items():
        packing.check_record(name, rec)
        packing.check_parts(name, rec, infos)
        if name in shapes:
            raise ValueError(f"{short(name, 80)} is stored both plain and packed")
        shapes[name] = tuple(rec["shape"])
    claimed = {packing.part_key(n, p) for n, rec in layouts.items() for p in packing.parts_of(rec)}
    for key in infos:
        if key.startswith(packing.PREFIX) and key not in claimed:
            raise ValueError(f"{short(key, 80)}: a packed tensor no layout describes")
    tied = meta.get("tied", {})
    for name in names:
        kept = tied.get(name, name) if isinstance(tied, dict) else name
        if not isinstance(kept, str) or kept not in layouts:
            raise ValueError(f"masks: {short(name, 80)} has no layout record")
    return shapes


def _brief(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]


def _check_metadata(meta: dict, shapes: dict[str, tuple[int, ...]]) -> None:
    """Types and references of every metadata field the loader uses (ValueError naming the field)."""
    source = meta.get("source")
    if not isinstance(source, dict) or source.get("kind") not in SOURCE_KINDS:
        raise ValueError(f"source.kind must be one of {', '.join(SOURCE_KINDS)}")
    if source["kind"] in ("builtin", "hf") and not isinstance(source.get("config", {}) or {}, dict):
        raise ValueError("source.config must be a mapping")
    if source["kind"] == "hf":  # the directory the model came from, and digests of its files (export --hf)
        if not isinstance(source.get("directory", ""), str):
            raise ValueError("source.directory must be a path")
        files = source.get("files", {})
        if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
            raise ValueError("source.files must map file names to digests")
    tied = meta.get("tied", {})
    if not isinstance(tied, dict) or not all(isinstance(k, str) and v in shapes for k, v in tied.items()):
        raise ValueError("tied must map parameter names to stored tensors")
    for key in ("patterns",):
        if not isinstance(meta.get(key, {}), dict):
            raise ValueError(f"{key} must be a mapping")
    replacements_of(meta)
    specs = meta.get("inputs", [])
    if not isinstance(specs, list):
        raise ValueError("inputs must be a list of input specs")
    for i, spec in enumerate(specs):
        check_input_spec(spec, f"inputs[{i}]")


def _read(directory: Path, header: tuple | None = None, kernels: dict[str, dict] | None = None, masks: bool = True
          ) -> tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, object]]:
    """Metadata, dense state (packed weights unpacked, after every check), masks by name (format 2:
    none unless ``masks``), and the kernel formats of the packed weights named in ``kernels`` (name
    -> keywords of :func:`compressor.packing.kernel_format`), which get no dense weight or mask."""
    path, meta, _ = header or _header(directory)
    state = _tensors(path)
    if meta["format"] == DENSE_FORMAT:
        masks = {k[len(MASK_PREFIX):]: state.pop(k) for k in list(state) if k.startswith(MASK_PREFIX)}
        return meta, state, masks, {}
    kernels = kernels or {}
    unpacked, formats = {}, {}
    for name, rec in meta["layouts"].items():
        parts = {p: state.pop(packing.part_key(name, p)) for p in packing.parts_of(rec)}
        try:
            if name in kernels:
                formats[name] = packing.kernel_format(name, rec, parts, **kernels[name])
            else:
                state[name], unpacked[name] = packing.unpack(name, rec, parts, mask=masks)
        except ValueError as exc:
            raise ArtifactError(f"{path}: {exc}; the artifact is damaged (nothing was loaded)") from None
    if not masks:
        return meta, state, {}, formats
    tied = meta.get("tied", {})
    return meta, state, {n: unpacked[tied.get(n, n)] for n in meta["masks"] if tied.get(n, n) in unpacked}, formats


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:
        raise ArtifactError(f"{path}: the tensors cannot be read ({_brief(exc)}); the artifact is damaged") from None


def load_masks(directory: str | Path) -> dict[str, torch.Tensor]:
    """The masks saved in an artifact, by parameter name."""
    return _read(Path(directory))[2]


ModelArg = Union[nn.Module, Callable[[], object], str, None]


def load(directory: str | Path, allow_pickle: bool = False, with_masks: bool = False, model: ModelArg = None) -> nn.Module:
    """Rebuild the compressed model of an artifact directory, in eval mode.

    Its outputs equal those of the in-memory model the pipeline produced. An artifact is
    untrusted input: loading it never imports or calls code named inside it. The architecture
    is rebuilt from data (a built-in model's name and config, a Hugging Face config); an
    artifact made from user code (a ``--model`` factory) loads only when the caller passes that
    code as ``model`` (an ``nn.Module``, a callable returning one, or a ``--model`` reference such
    as ``"my_model.py:make_model"``), and one made from a pickled module only with
    ``allow_pickle``. Sizes described by the metadata are checked against the stored tensors on
    the meta device before anything is allocated.

    With ``with_masks`` the masks are re-installed as parametrizations (for further
    fine-tuning); otherwise the model is plain, with the pruned weights stored as zeros. Sparse
    kernel modules the pipeline installed (``swap_kernels``) are built straight from the packed
    weights (:func:`compressor.packing.kernel_format`): a balanced-block module takes the file's
    kept blocks and block columns, an N:M module its values and positions, and no dense copy of a
    swapped weight is made; the other masked weights are unpacked to dense. Structural
    replacements (``dynamic_gate``'s gated modules, which hold parameters of their own) are
    rebuilt as fresh modules before the saved state is loaded into them.

    A built-in or Hugging Face architecture is built on the meta device (the skeleton the sizes
    were checked on) and takes the file's tensors as they are: nothing is initialised or copied,
    and a swapped layer's dense weight never exists. A model passed as ``model``, a pickled one,
    one with gated modules or with buffers it does not save outside the swapped modules (a Hugging
    Face position-id table) is built for real first, so its dense layers are allocated once by
    its constructor.
    """
    directory = Path(directory)
    header = path, meta, shapes = _header(directory)
    replacements = replacements_of(meta)
    build = _architecture(meta["source"], model, allow_pickle, directory, path)
    skeleton = None
    if model is None and meta["source"]["kind"] in ("builtin", "hf"):  # sizes come from the metadata
        skeleton = _check_sizes(build, shapes, meta, path)
    kernels = _kernel_weights(meta, replacements, path)
    requests = {name: request for name, (_, request) in kernels.items()}
    _, state, masks, formats = _read(directory, header, requests, masks=with_masks)  # the masks only to install
    for alias, kept in meta.get("tied", {}).items():
        state[alias] = state[kept]
    swaps = [r for r in replacements if not r.structural]
    try:
        # the meta-device skeleton takes the file's tensors as they are: no initialisation, no copy, and a
        # swapped layer's dense weight is never allocated; a built model where that cannot work
        on_meta = _skeleton_takes_state(skeleton, replacements)
        net = skeleton if on_meta else build()
        # structural replacements (gated modules) add parameters: rebuild them before loading the state
        replay(net, replacements, masks, structural=True)
        if meta["format"] == FORMAT_VERSION:
            _install_kernels(net, swaps, formats, state)
        apply_state_dict(net, state, str(path), assign=on_meta)
        if on_meta:
            left = [n for n, t in [*net.named_parameters(), *net.named_buffers()] if t.is_meta]
            if left:
                raise ArtifactError(f"{path}: {short(left[0], 80)} is not in the artifact (a tensor the model does "
                                    "not save); the artifact was made for other code")
        if with_masks:
            if swaps:
                raise ArtifactError(f"{directory} has sparse kernel modules installed; load it without with_masks")
            for name, mask in masks.items():
                set_mask(net, name, mask)
        if meta["format"] == DENSE_FORMAT:
            replay(net, replacements, masks)  # format 1: the kernel modules from the dense weights and masks
    except CompressorError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as exc:
        raise ArtifactError(f"{path}: the model cannot be rebuilt from the artifact ({type(exc).__name__}: "
                            f"{_brief(exc)}); the artifact is damaged or was made for other code") from None
    net.eval()
    return net


def replacements_of(meta: dict) -> list[Replacement]:
    """The replacement records of an artifact's metadata, each checked by :meth:`Replacement.from_json`
    (ValueError naming the field, e.g. ``replacements[0].options.block``)."""
    records = meta.get("replacements", [])
    if not isinstance(records, list):
        raise ValueError("replacements must be a list")
    return [Replacement.from_json(rec, f"replacements[{i}]") for i, rec in enumerate(records)]


def _kernel_weights(meta: dict, replacements: list[Replacement], path: Path) -> dict[str, tuple[str, dict]]:
    """Packed weights that kernel swaps hold: weight name -> (module path, the format to build)."""
    if meta["format"] != FORMAT_VERSION:
        return {}
    tied = meta.get("tied", {})
    shared = set(tied) | set(tied.values())
    kernels = {}
    for rec in replacements:
        request = kernel_request(rec)
        if request is None:
            continue
        prefix = rec.module + "."
        for name in meta["layouts"]:
            if name.startswith(prefix) and "." not in name[len(prefix):]:
                if name in shared:  # swap_kernels leaves tied weights dense: this file was not written by it
                    raise ArtifactError(f"{path}: {short(name, 80)} is tied to another name but stored in the kernel "
                                        f"module {short(rec.module, 80)}; the artifact is damaged")
                kernels[name] = (rec.module, request)
    return kernels


def _skeleton_takes_state(skeleton: nn.Module | None, replacements: list[Replacement]) -> bool:
    """Whether the meta-device skeleton can be loaded by assignment: it was built (a built-in or
    Hugging Face architecture), no gated module must be rebuilt first (those draw initial values),
    and every buffer the model does not save (a Hugging Face position-id table) sits inside a module
    that a kernel swap replaces; the values of the others exist only in a really built model."""
    if skeleton is None or any(r.structural for r in replacements):
        return False
    saved = set(skeleton.state_dict())
    swapped = tuple(r.module + "." for r in replacements)
    return all(name in saved or name.startswith(swapped) for name, _ in skeleton.named_buffers())


def _install_kernels(net: nn.Module, swaps: list[Replacement], formats: dict[str, object],
                     state: dict[str, torch.Tensor]) -> None:
    """Put each kernel swap's module into ``net``, built from its weights' kernel formats and its other
    tensors (taken out of ``state``); the new modules' own tensors go into ``state`` under their names,
    so the one strict key check of :func:`apply_state_dict` covers them. Every module is built before
    any is installed."""
    built = []
    for rec in swaps:
        path = rec.module
        module = net.get_submodule(path)
        prefix = path + "."
        own = {k[len(prefix):]: v for k, v in formats.items() if k.startswith(prefix) and "." not in k[len(prefix):]}
        tensors = {k: state.pop(prefix + k) for k in module.state_dict(keep_vars=True) if prefix + k in state}
        built.append((path, build_packed(module, rec, own, tensors)))
    for path, new in built:
        set_module(net, path, new)
        state.update({f"{path}.{k}": v for k, v in new.state_dict(keep_vars=True).items()})


def _architecture(source: dict, model: ModelArg, allow_pickle: bool, directory: Path, path: Path) -> Callable[[], nn.Module]:
    """A function that builds the artifact's architecture (weights still to load), chosen without running anything."""
    if isinstance(model, nn.Module):
        return lambda: model
    if isinstance(model, str):
        return lambda: load_model(model).model  # the caller named this code: it may run
    if callable(model):
        return lambda: _called(model)
    kind = source["kind"]
    if kind == "builtin":
        return lambda: rebuild_builtin(source)
    if kind == "hf":
        return lambda: rebuild_hf(source.get("config") or {})
    if kind == "factory":
        ref = short(source.get("ref"), 80)
        raise ArtifactError(
            f"{directory} was made from user code ({ref}); loading an artifact never runs code it names. "
            "If you trust that code, pass it: compressor.load(DIR, model=make_model) or --model FILE.py:FUNCTION"
        )
    if not allow_pickle:  # kind == "pickle"
        raise ModelLoadError(f"{directory} holds a pickled module, which runs code when loaded; "
                            "load it with allow_pickle=True (--allow-pickle) only if you trust its author")
    return lambda: torch.load(directory / "module.pt", map_location="cpu", weights_only=False)


def _called(factory: Callable[[], object]) -> nn.Module:
    built = factory()
    if isinstance(built, tuple) and built and isinstance(built[0], nn.Module):
        built = built[0]
    if not isinstance(built, nn.Module):
        raise ArtifactError(f"model= returned {type(built).__name__}, not an nn.Module")
    return built


#: in-place writes of values (initialisers) that a constructor runs on its new parameters
_VALUE_WRITES = frozenset({"normal_", "uniform_", "zero_", "fill_", "erfinv_", "exponential_", "bernoulli_", "random_",
                           "log_normal_", "cauchy_", "geometric_", "clamp_", "mul_", "add_", "sub_", "div_"})
#: random factories (a built-in model's example inputs): name -> dtype when none is given
_RANDOM_FACTORIES = {"rand": None, "randn": None, "randint": torch.int64, "randperm": torch.int64}


class _NoValuesOnMeta(TorchFunctionMode):
    """Skips computing values for meta tensors, which hold none: on the meta device ``normal_``
    (``nn.Embedding``'s initialiser) and ``randint`` (a built-in model's example inputs) run
    Python meta kernels whose first call in a process imported torch's meta registrations and
    sympy (3-5 s and ~160 MB in every ``compressor.load`` of a built-in model). Initialisers on
    meta tensors return them as they are, random factories an empty meta tensor of their size;
    everything else runs as usual. Entered before ``torch.device("meta")``, whose mode then sits
    on top and sets the device, so factories arrive here with ``device="meta"``."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in _VALUE_WRITES:
            target = args[0] if args else kwargs.get("tensor")  # nn.init passes its tensor by keyword
            if isinstance(target, torch.Tensor) and target.is_meta:
                return target
        elif name in _RANDOM_FACTORIES and str(kwargs.get("device")) == "meta":
            if "size" in kwargs:
                size = kwargs["size"]
            elif name == "randperm":
                size = args[:1]
            elif name == "randint":
                size = args[-1]
            else:
                size = args[0] if len(args) == 1 and not isinstance(args[0], int) else args
            dtype = kwargs.get("dtype") or _RANDOM_FACTORIES[name] or torch.get_default_dtype()
            return torch.empty(tuple(size), dtype=dtype, device="meta")
        return func(*args, **kwargs)


def _check_sizes(build: Callable[[], nn.Module], shapes: dict[str, tuple[int, ...]], meta: dict, path: Path) -> nn.Module:
    """Build the architecture on the meta device (no memory) and compare it with the stored tensors,
    so metadata claiming a huge model is refused before anything is allocated; returns that skeleton."""
    try:
        with _NoValuesOnMeta(), torch.device("meta"):  # the device mode on top: it sets the device first
            skeleton = build()
    except CompressorError:
        raise
    except Exception as exc:  # a config the model class rejects
        raise ArtifactError(f"{path}: the model described by the metadata cannot be built ({type(exc).__name__}: "
                            f"{_brief(exc)})") from None
    structural = tuple(r.module + "." for r in replacements_of(meta) if r.structural)
    tied = meta.get("tied", {})
    stored = sum(math.prod(s) for s in shapes.values())
    # what the file must hold: each parameter and persistent buffer object once (tied weights are one object);
    # non-persistent buffers (a Hugging Face BertModel's position_ids, token_type_ids) are never saved, and
    # counting them refused every such artifact as "damaged"
    unique = {id(t): t for t in skeleton.state_dict(keep_vars=True).values()}
    wanted = sum(t.numel() for t in unique.values())
    for name, tensor in skeleton.state_dict().items():
        if name.startswith(structural):
            continue  # a gated module's own tensors are checked when they load
        have = shapes.get(tied.get(name, name))
        if have is not None and have != tuple(tensor.shape):
            raise ArtifactError(f"{path}: the metadata describes {name} as {tuple(tensor.shape)} but the file stores "
                                f"{have}; the artifact is damaged (nothing was allocated)")
    if wanted > stored:
        raise ArtifactError(f"{path}: the metadata describes a model of {wanted:,} values but the file stores "
                            f"{stored:,}; the artifact is damaged (nothing was allocated)")
    return skeleton


def write_dense(directory: str | Path, path: str | Path, force: bool = False) -> Path:
    """Write an artifact's weights to ``path`` in the dense layout (format 1): every weight a
    plain tensor with its pruned entries zero, each mask a bool tensor ``__mask__.<name>``, and
    the metadata record (so ``path`` is a loadable ``model.safetensors``). For tools that read
    plain tensors; nothing is built or run, and the artifact is left as it is."""
    from safetensors.torch import save_file

    directory, path = Path(directory), Path(path)
    if path.resolve().is_relative_to(directory.resolve()):
        raise ArtifactError(f"{path} is inside the artifact {directory}; write the dense weights elsewhere")
    meta, state, masks, _ = _read(directory)
    meta = {k: v for k, v in meta.items() if k not in ("layouts", "masks")} | {"format": DENSE_FORMAT}
    state.update({MASK_PREFIX + name: mask.contiguous() for name, mask in masks.items()})
    with atomic_file(path, mode="wb", force=force) as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata={"compressor": json.dumps(meta)})
    return path


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

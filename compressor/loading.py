"""Load models and checkpoints safely.

A model comes from one of:

- a built-in name (``lstm-lm``), with its shipped weights;
- a factory, ``path/to/file.py:make_model`` or ``package.module:make_model``: a callable with
  no required arguments returning an ``nn.Module`` or ``(module, example_inputs)``; a module
  with an ``example_inputs()`` method provides its own;
- a Hugging Face model directory (``config.json`` + weights), when ``transformers`` is installed;
- a pickled whole module (``--checkpoint model.pt`` with no ``--model``), only with
  ``allow_pickle=True``: unpickling runs arbitrary code.

Checkpoints are ``.safetensors`` or state dicts (``.pt``/``.pth``/``.bin``/``.ckpt``) read with
``torch.load(weights_only=True)``. Keys must match the model exactly: missing and unexpected
keys are listed. Files are only ever read.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pickle
import re
import sys
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from .errors import ModelLoadError, short
from .recipe import parse_input_spec

__all__ = ["ModelSpec", "no_metric", "load_model", "load_state_dict", "apply_state_dict", "rebuild_hf", "hf_class", "linear_from_conv1d",
           "conv1d_layout", "hf_companion_files", "hf_file_digests", "hf_quiet", "import_callable", "check_finite", "make_inputs"]

_STATE_DICT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def no_metric(model: nn.Module, max_tokens: int | None = None) -> dict[str, float]:
    """A ``ModelSpec.evaluate`` that measures nothing: the report gets no held-out metric."""
    return {}


@dataclass
class ModelSpec:
    """A loaded model and what the toolkit knows about it.

    ``source`` is a JSON-able record of how to rebuild the architecture (saved in artifacts);
    ``evaluate(model, max_tokens=None) -> {metric: value}`` is a held-out quality measure when one
    is known (the built-in LM reports perplexity); ``max_tokens`` caps the held-out text scored
    (tests and benchmarks; None scores all of it). ``None``: the pipeline measures its default (a
    Hugging Face model's held-out text metric, :func:`compressor.pipeline.held_out_metric`; nothing for
    other models); :func:`no_metric`: nothing at all (sizes and timings only).
    """

    model: nn.Module
    example_inputs: tuple | None
    source: dict
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None
    description: str = ""
    notes: list[str] = field(default_factory=list)
    #: the character vocabulary of a language model, when it has one (the lm task uses it)
    vocab: object | None = None


def make_inputs(specs, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random example inputs from specs like ``"2x32:int64"`` (integers drawn from [0, 2)): parsed
    here, drawn by :func:`compressor.export.fresh_inputs` like every other input record."""
    from .export import fresh_inputs  # the exporter's imports (ONNX tooling) only when inputs are made

    records = []
    for i, spec in enumerate(specs):
        shape, dtype = parse_input_spec(spec, f"inputs[{i}]")
        records.append({"shape": list(shape), "dtype": dtype})
    return fresh_inputs(records, torch.Generator().manual_seed(seed))


def import_callable(ref: str, fail: Callable[[str], Exception]) -> tuple[Callable, str]:
    """The callable a ``file.py:function`` or ``package.module:function`` reference names, and its
    canonical reference. This runs the code it names: only for references the user wrote (``--model``,
    a recipe's task), never for ones an artifact holds.

    A file is loaded from its path (relative to the working directory); a dotted module is imported
    with the working directory on ``sys.path`` for that import only (the ``compress`` script does not
    put it there, ``python -m compressor`` does), then from the installed packages. ``fail(reason)``
    makes the exception raised for a bad reference (its one line names the reference)."""
    target, sep, attr = ref.rpartition(":")
    if not sep or not target or not attr:
        raise fail("expected 'file.py:function' or 'package.module:function'")
    if target.endswith(".py") or "/" in target:
        path = Path(target).resolve()
        if not path.is_file():
            raise fail(f"file not found: {path}")
        name = f"_compressor_user_{abs(hash(str(path)))}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except SystemExit as exc:
            raise fail(f"importing {path} called sys.exit({short(exc.code)})") from None
        except Exception as exc:
            raise fail(f"importing {path} failed: {type(exc).__name__}: {_oneline(exc)}") from None
        canonical = f"{path}:{attr}"
    else:
        cwd = os.getcwd()
        added = cwd not in sys.path
        if added:
            sys.path.insert(0, cwd)
        try:
            importlib.invalidate_caches()  # a module file written a moment ago (the finders cache listings)
            module = importlib.import_module(target)
        except ImportError as exc:
            raise fail(f"cannot import {target!r} (from the working directory or the installed packages): "
                       f"{_oneline(exc)}") from None
        except SystemExit as exc:
            raise fail(f"importing {target} called sys.exit({short(exc.code)})") from None
        except Exception as exc:
            raise fail(f"importing {target} failed: {type(exc).__name__}: {_oneline(exc)}") from None
        finally:
            if added and cwd in sys.path:
                sys.path.remove(cwd)
        canonical = ref
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise fail(f"{attr!r} is not a callable in {target}")
    return factory, canonical


def _oneline(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]


def _import_factory(ref: str) -> tuple[Callable, str]:
    return import_callable(ref, lambda reason: ModelLoadError(f"--model {ref!r}: {reason}"))


def _from_factory(ref: str) -> ModelSpec:
    factory, canonical = _import_factory(ref)
    try:
        built = factory()
    except SystemExit as exc:  # a factory that ends the program would otherwise exit silently
        raise ModelLoadError(f"--model {ref!r}: the factory called sys.exit({short(exc.code)})") from None
    except Exception as exc:
        raise ModelLoadError(f"--model {ref!r}: calling the factory failed: {type(exc).__name__}: {exc}") from exc
    example = None
    if isinstance(built, tuple) and len(built) == 2 and isinstance(built[0], nn.Module):
        built, example = built
        example = tuple(example) if isinstance(example, (tuple, list)) else (example,)
    if not isinstance(built, nn.Module):
        raise ModelLoadError(f"--model {ref!r}: the factory returned {type(built).__name__}, not an nn.Module")
    if example is None and callable(getattr(built, "example_inputs", None)):
        example = tuple(built.example_inputs())
    return ModelSpec(built, example, {"kind": "factory", "ref": canonical}, description=canonical)


def _from_hf_dir(path: Path) -> ModelSpec:
    try:
        import transformers
    except ImportError:
        raise ModelLoadError(
            f"--model {path}: a Hugging Face model directory needs transformers; pip install 'compressor[hf]'"
        ) from None
    try:
        config = transformers.AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False)
        try:
            cls = hf_class(config.architectures)
        except ModelLoadError as exc:
            raise ModelLoadError(f"--model {path}: {exc}") from None
        with hf_quiet(progress=False):
            model = cls.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError, TypeError) as exc:  # bad config.json, no weights, unknown model_type
        reason = " ".join(str(exc).split())[:240]
        raise ModelLoadError(f"--model {path}: not a loadable Hugging Face model directory ({type(exc).__name__}: "
                             f"{reason})") from None
    _prepare_hf(model)
    model.eval()
    seq = min(16, getattr(config, "max_position_embeddings", 16) or 16)
    example = (torch.randint(0, getattr(config, "vocab_size", 2) or 2, (1, seq)),)
    # the directory is a record (the text task finds the tokenizer there; `compress export --hf` copies its files
    # and checks them against these digests); artifacts rebuild from the config alone
    source = {"kind": "hf", "config": config.to_dict(), "directory": str(path.resolve()),
              "files": hf_file_digests(path)}
    return ModelSpec(model, example, source, description=f"Hugging Face {config.model_type} from {path}")


#: what a Hugging Face model directory holds the model's weights in (an export writes its own, and never copies
#: these): top-level weight files of every framework and their shard indexes, and folders of other runtimes' exports
HF_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".ot", ".onnx", ".onnx_data",
                      ".gguf", ".tflite", ".index.json")
HF_WEIGHT_FOLDERS = ("onnx", "openvino", "coreml")


def hf_companion_files(directory: str | Path) -> list[str]:
    """The files of a Hugging Face model directory besides the model's weights, as sorted relative
    paths (``/``-separated): config, tokenizer, sentence-transformers modules (``modules.json``,
    ``1_Pooling/config.json``, a ``2_Dense/`` layer's own weights), README, ... Left out: hidden
    entries (``.git``, ``.cache``), the top level's weight files (:data:`HF_WEIGHT_SUFFIXES`: the
    model's, in any framework) and folders of other runtimes' exports (:data:`HF_WEIGHT_FOLDERS`);
    linked folders are not followed."""
    root = Path(directory)
    found = []
    for folder, dirs, files in os.walk(root):
        rel = Path(folder).relative_to(root)
        top = rel == Path(".")
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not (top and d in HF_WEIGHT_FOLDERS))
        for name in files:
            if name.startswith(".") or (top and name.endswith(HF_WEIGHT_SUFFIXES)) or not (Path(folder) / name).is_file():
                continue
            found.append((rel / name).as_posix())
    return sorted(found)


def hf_file_digests(directory: str | Path) -> dict[str, str]:
    """SHA-256 of each of :func:`hf_companion_files`, by relative path."""
    from .checkpoint import file_digest

    return {name: file_digest(Path(directory) / name) for name in hf_companion_files(directory)}


@contextmanager
def hf_quiet(progress: bool = False, info: bool = True):
    """transformers without its progress bars (``progress=False``: "Loading weights" on stderr made a
    failing command print more than its one line) and, with ``info=False``, without its info and
    warning logs (for callers that check what they would say themselves); restored afterwards."""
    from transformers.utils import logging as hf_logging

    bars, level = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    if not progress:
        hf_logging.disable_progress_bar()
    if not info:
        hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()
        hf_logging.set_verbosity(level)


#: how a pre-1.6 torch.save file written with pickle protocol 0 or 1 starts (its magic number as a text LONG)
_LEGACY_TEXT_MAGIC = b"L%d" % torch.serialization.MAGIC_NUMBER


def _unpickler_reason(exc: Exception) -> str:
    """The line of torch's weights-only refusal that names what it refused (without its terminal styling)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    reason = next((line for line in lines if "WeightsUnpickler error" in line), lines[0] if lines else type(exc).__name__)
    return reason.split(". Please use", 1)[0]  # torch's advice (allow-list the class) is not ours to give


def _torch_load(path: Path, allow_pickle: bool):
    with open(path, "rb") as f:
        head = f.read(len(_LEGACY_TEXT_MAGIC))
    # torch.save writes a zip archive; files of torch < 1.6 and plain pickles start with the
    # pickle protocol opcode (protocol 2+), or, saved with pickle_protocol 0 or 1, with torch's
    # magic number as a text LONG. Anything else (a text file, a truncated download) is not a
    # checkpoint, whatever the unpickler's "weights only" error would suggest.
    if not (head.startswith((b"PK\x03\x04", b"\x80")) or head == _LEGACY_TEXT_MAGIC):
        raise ModelLoadError(f"{path} is not a torch checkpoint (neither a torch.save archive nor a pickle; "
                             f"it starts with {head[:4]!r})")
    try:
        return torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as exc:
        raise ModelLoadError(
            f"{path} holds pickled Python objects, which can run arbitrary code when loaded; "
            f"pass --allow-pickle if you trust this file ({_unpickler_reason(exc)})"
        ) from None
    except Exception as exc:
        raise ModelLoadError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from None


def load_state_dict(path: str | Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Read a checkpoint as a state dict, without executing pickled code unless allowed."""
    path = Path(path)
    if path.is_dir():
        raise ModelLoadError(f"checkpoint {path} is a directory; name the weights file inside it "
                             "(.safetensors, or a state dict .pt/.pth/.bin), or pass a model directory as --model")
    if not path.is_file():
        raise ModelLoadError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:
            raise ModelLoadError(f"cannot read safetensors file {path}: {exc}") from None
    if path.suffix not in _STATE_DICT_SUFFIXES:
        raise ModelLoadError(f"checkpoint {path}: unknown format; use .safetensors or a state dict {'/'.join(_STATE_DICT_SUFFIXES)}")
    obj = _torch_load(path, allow_pickle)
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelLoadError(f"checkpoint {path} is not a state dict of tensors")
    return obj


def apply_state_dict(model: nn.Module, state: dict[str, torch.Tensor], origin: str, assign: bool = False) -> None:
    """Load ``state`` into ``model``, failing with the missing/unexpected keys and shape mismatches.

    A tied parameter stored under one of its names (``safetensors.torch.save_model`` keeps one
    name per shared tensor) fills its other names. With ``assign`` the model's tensors become the
    given ones, cast to the model's dtypes where they differ (a model built on the meta device:
    nothing copied or initialised); names tied in the model share one ``nn.Parameter`` again."""
    expected = model.state_dict()
    state = dict(state)
    for names in _tied_names(model):
        present = [n for n in names if n in state]
        for name in names:
            if present and name not in state:
                state[name] = state[present[0]]
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys: {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}")
        if unexpected:
            parts.append(f"unexpected keys: {', '.join(unexpected[:10])}{' ...' if len(unexpected) > 10 else ''}")
        if wrong:
            parts.append("shape mismatches: " + ", ".join(
                f"{k} {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}" for k in wrong[:5]))
        raise ModelLoadError(f"checkpoint {origin} does not match the model; " + "; ".join(parts))
    if assign:
        state = _as_parameters(model, state)
    model.load_state_dict(state, assign=assign)


def _as_parameters(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with each parameter's tensor wrapped once in an ``nn.Parameter`` (one object for all
    the names one tensor fills, so assignment keeps weights tied) and every tensor in the model's dtype."""
    params = dict(model.named_parameters(remove_duplicate=False))
    buffers = dict(model.named_buffers(remove_duplicate=False))
    made: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id(tensor) -> (tensor, what it became)
    out = {}
    for name, tensor in state.items():
        if id(tensor) in made:
            out[name] = made[id(tensor)][1]
            continue
        like = params.get(name, buffers.get(name))
        value = tensor.to(like.dtype) if like is not None and like.dtype != tensor.dtype else tensor
        if name in params and not isinstance(value, nn.Parameter):
            value = nn.Parameter(value, requires_grad=params[name].requires_grad)
        made[id(tensor)] = (tensor, value)
        out[name] = value
    return out


def _tied_names(model: nn.Module) -> list[list[str]]:
    """Groups of names under which one parameter object is reachable (more than one name each)."""
    groups: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def check_finite(model: nn.Module) -> None:
    """Fail if any floating parameter or buffer holds NaN or Inf, naming them."""
    bad = [name for name, t in list(model.named_parameters()) + list(model.named_buffers())
           if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise ModelLoadError(f"the weights hold NaN or Inf values in: {', '.join(bad[:10])}")


def load_model(
    model: str | None = None,
    checkpoint: str | Path | None = None,
    allow_pickle: bool = False,
    inputs: tuple[str, ...] = (),
) -> ModelSpec:
    """Load a model as described in the module docstring; the default is the built-in ``lstm-lm``."""
    from .models import BUILTIN_MODELS, build_builtin

    if model is None and checkpoint is not None and Path(checkpoint).suffix in _STATE_DICT_SUFFIXES:
        if Path(checkpoint).is_dir():
            load_state_dict(checkpoint)  # the one-line refusal of a directory
        obj = _torch_load(Path(checkpoint), allow_pickle) if Path(checkpoint).is_file() else None
        if obj is None:
            raise ModelLoadError(f"checkpoint not found: {checkpoint}")
        if not isinstance(obj, nn.Module):
            raise ModelLoadError(f"checkpoint {checkpoint} is a state dict: name the architecture with --model")
        obj.eval()
        spec = ModelSpec(obj, None, {"kind": "pickle"}, description=f"pickled module from {checkpoint}")
        checkpoint = None
    elif model is None or model in BUILTIN_MODELS:
        spec = build_builtin(model or "lstm-lm")
    elif Path(model).is_dir():
        if not (Path(model) / "config.json").is_file():
            raise ModelLoadError(f"--model {model}: a directory must be a Hugging Face model directory (config.json + "
                                 "weights), and it has no config.json")
        spec = _from_hf_dir(Path(model))
    elif ":" in model:
        spec = _from_factory(model)
    else:
        raise ModelLoadError(
            f"--model {model!r}: not a built-in model ({', '.join(BUILTIN_MODELS)}), "
            "a factory ('file.py:function' or 'package.module:function') or a model directory"
        )
    if checkpoint is not None:
        apply_state_dict(spec.model, load_state_dict(checkpoint, allow_pickle), str(checkpoint))
        spec.source = {**spec.source, "checkpoint": str(checkpoint)}
    if inputs:
        spec.example_inputs = make_inputs(inputs)
    check_finite(spec.model)
    spec.model.eval()
    return spec


def rebuild_hf(config: dict, prepare: bool = True) -> nn.Module:
    """A Hugging Face architecture from a saved ``config.to_dict()`` (random weights), as the toolkit
    runs it (:func:`_prepare_hf`), or with ``prepare=False`` as transformers builds it (Conv1D layers).

    The config is untrusted (it comes from an artifact): its ``model_type`` must be one that
    transformers itself implements, and code a config points at (``auto_map``) is never loaded."""
    try:
        import transformers
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    except ImportError:
        raise ModelLoadError("this artifact holds a Hugging Face model; pip install 'compressor[hf]'") from None
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        raise ModelLoadError(f"Hugging Face model_type {str(model_type)[:40]!r} is not one transformers implements")
    fields = {k: v for k, v in config.items() if k not in ("model_type", "auto_map")}
    hf_config = transformers.AutoConfig.for_model(model_type, **fields)
    cls = hf_class(hf_config.architectures)
    model = cls.from_config(hf_config, trust_remote_code=False) if cls is transformers.AutoModel else cls(hf_config)
    return _prepare_hf(model) if prepare else model


def _prepare_hf(model: nn.Module) -> nn.Module:
    """A Hugging Face model as the toolkit runs it: Conv1D layers as nn.Linear, and no key/value
    cache in the outputs (a generation-time cache object is no tensor: ONNX export failed on it)."""
    if getattr(getattr(model, "config", None), "use_cache", None):
        model.config.use_cache = False
    return linear_from_conv1d(model)


def linear_from_conv1d(model: nn.Module) -> nn.Module:
    """Replace every transformers ``Conv1D`` (GPT-2 family: ``y = x @ W + b`` with ``W`` stored
    (in, out)) by the ``nn.Linear`` that computes the same (``W`` transposed), in place.

    The rest of the toolkit (masks and patterns along the input dimension, kernels, reports,
    export) then treats those layers like any Linear; the parameter names stay the same."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:
        return model
    for path, module in list(model.named_modules()):
        if not isinstance(module, Conv1D):
            continue
        w = module.weight
        linear = nn.Linear(w.shape[0], w.shape[1], bias=module.bias is not None, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            linear.weight.copy_(w.t())
            if module.bias is not None:
                linear.bias.copy_(module.bias)
        parent, _, name = path.rpartition(".")
        setattr(model.get_submodule(parent), name, linear)
    return model


def conv1d_layout(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`linear_from_conv1d` for a state dict: ``state`` (the toolkit's model,
    Conv1D layers as ``nn.Linear``, weights (out, in)) with the weight of every ``Conv1D`` of
    ``model`` (the same architecture as transformers builds it, e.g. on the meta device) back in
    Conv1D's (in, out) layout."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:
        return dict(state)
    out = dict(state)
    for path, module in model.named_modules():
        if isinstance(module, Conv1D) and f"{path}.weight" in out:
            out[f"{path}.weight"] = out[f"{path}.weight"].t().contiguous()
    return out


def hf_class(architectures) -> type:
    """The transformers class a config's ``architectures`` names (task heads kept: a
    ``BertForMaskedLM`` directory loads with its head), ``AutoModel`` when it names none.

    Only classes transformers itself implements are used: a name it does not know (custom code
    that ``trust_remote_code`` would download and run) is refused."""
    import transformers

    if not architectures:
        return transformers.AutoModel
    name = architectures[0]
    cls = getattr(transformers, name, None) if isinstance(name, str) and name.isidentifier() else None
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise ModelLoadError(f"config.json names architecture {short(name)}, which transformers does not implement; "
                             "models with custom code are not loaded")
    return cls

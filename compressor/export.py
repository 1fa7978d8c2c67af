"""ONNX export of a compressed model, verified in ONNX Runtime before it is kept.

``compress export DIR`` (or ``export: {onnx: true}`` in a recipe) writes ``model.onnx``: the
dynamo exporter traces the model as it runs, so block-sparse and N:M kernel modules export
as plain Gather/MatMul/... that stock ONNX Runtime runs fast, with no custom op. Each
recurrent module (LSTM/GRU, unidirectional) also gets a single-step graph
``<module>.step.onnx`` with inputs ``(x_t, h[, c])`` and outputs ``(y_t, h[, c])`` for
streaming inference.

Every graph is checked on fresh random inputs against torch (the step graph against the
module's own full-sequence forward); the worst absolute and relative errors are printed. A
mismatch beyond ``tolerance`` (relative to the output scale) is an error and leaves no file.
"""

from __future__ import annotations

import contextlib
import copy
import math
from pathlib import Path

import torch
import torch.nn as nn

from .errors import CompressorError, first_line
from .recipe import INPUT_DTYPES, MAX_INPUT_ELEMENTS
from .onnx_compact import compact_initializers
from .outputs import atomic_file
from .swaps import set_module
from .kernels import PRODUCT_ORDERS, BlockSparseLinear, SparseGRU, SparseLSTM, export_onnx, flatten_outputs, ort_session, output_names
from .kernels.onnx_check import OutputCountError, max_errors, ort_errors  # the checks' one harness (max_errors re-exported)

__all__ = ["check_input_spec", "ExportError", "input_specs", "fresh_inputs", "max_errors", "export_model", "recurrent_graph_note",
           "step_graph_note", "token_axes"]



class ExportError(CompressorError):
    """ONNX Runtime does not reproduce torch: nothing was written."""


def input_specs(example_inputs) -> list[dict]:
    """JSON-able shapes/dtypes (and the integer range) of example inputs, kept in artifacts."""
    specs = []
    for t in example_inputs or ():
        spec = {"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", "")}
        if not t.is_floating_point():
            spec["high"] = int(t.max()) + 1 if t.numel() else 2
        specs.append(spec)
    return specs


def check_input_spec(spec: object, where: str) -> None:
    """Raise ValueError unless ``spec`` is an :func:`input_specs` record of a bounded size (artifact
    metadata is untrusted: an input of a trillion elements would be allocated by export and bench)."""
    if not isinstance(spec, dict) or spec.get("dtype") not in INPUT_DTYPES or not isinstance(spec.get("shape"), list):
        raise ValueError(f"{where}: expected {{shape: [..], dtype: one of {', '.join(INPUT_DTYPES)}}}")
    shape = spec["shape"]
    if not shape or not all(type(d) is int and d >= 1 for d in shape) or math.prod(shape) > MAX_INPUT_ELEMENTS:
        raise ValueError(f"{where}.shape: expected positive sizes with at most {MAX_INPUT_ELEMENTS:,} elements")
    high = spec.get("high", 2)
    if type(high) is not int or not 1 <= high <= 2**31:
        raise ValueError(f"{where}.high: expected an integer in [1, 2**31]")


def fresh_inputs(specs: list[dict], gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Random inputs of the shapes and dtypes in ``specs`` (:func:`input_specs`); integers in [0, high)."""
    out = []
    for s in specs:
        dtype = INPUT_DTYPES[s["dtype"]]
        if dtype.is_floating_point:
            out.append(torch.randn(s["shape"], generator=gen).to(dtype))
        else:
            out.append(torch.randint(0, s.get("high", 2), s["shape"], generator=gen).to(dtype))
    return tuple(out)


def _verified(path: Path, module: nn.Module, make_inputs, reference, tolerance: float, trials: int,
              naming: dict | None = None) -> dict:
    """Export to a temporary file next to ``path``, check it in ORT, then rename into place.
    ``naming``: export_onnx's input_names / output_names / dynamic_axes."""
    inputs = [make_inputs(trial) for trial in range(trials + 1)]  # trial 0 exports, the others check
    with torch.no_grad():
        expected_all = [flatten_outputs(reference(*x)) for x in inputs]
    with atomic_file(path) as tmp:
        export_onnx(module, inputs[0], tmp, **(naming or {}))
        _finish_graph(tmp, inputs, expected_all, (naming or {}).get("dynamic_axes"))
        try:
            worst_abs, worst_rel = ort_errors(ort_session(tmp), inputs[1:], expected_all[1:])
        except OutputCountError as exc:
            raise ExportError(f"{path.name}: {exc}") from None
        if not worst_rel <= tolerance:
            raise ExportError(
                f"{path.name}: ONNX Runtime differs from torch: max abs error {worst_abs:.3g}, "
                f"max error relative to the output scale {worst_rel:.3g} > tolerance {tolerance:g}; nothing written"
            )
    return {"file": path.name, "max_abs_error": worst_abs, "max_rel_error": worst_rel, "trials": trials}


def _finish_graph(path: Path, inputs: list[tuple], outputs: list[list[torch.Tensor]],
                  dynamic_axes: dict[str, dict[int, str]] | None) -> None:
    """Store the graph's pruned initializers as bitmask + kept values (:mod:`compressor.onnx_compact`;
    ORT folds them back at session creation, so what runs is unchanged and verified after), and give
    every output dimension that torch's outputs show varying over the check trials a symbolic size:
    the exporter declared some of them at the example's size (a dense ``nn.LSTM``'s output sequence:
    ``[batch, 32, 104]``, and its inner shapes alike), and ORT then warned on every run of another
    length. The name is the input axis whose sizes vary alike (``batch``, ``sequence``), else
    ``<output>_<dim>``; the exporter's inner shape annotations are then dropped (ORT infers them)."""
    import onnx

    graph = onnx.load(str(path))
    changed = compact_initializers(graph)
    resized = False
    axes = {}  # axis name -> its size in every trial
    for i, dims in enumerate((dynamic_axes or {}).values()):
        for d, name in dims.items():
            axes.setdefault(name, [tuple(x)[i].shape[d] for x in inputs])
    for k, out in enumerate(graph.graph.output):
        dims = out.type.tensor_type.shape.dim
        sizes = [tuple(o[k].shape) for o in outputs if k < len(o)]
        if len(sizes) != len(outputs) or any(len(sz) != len(dims) for sz in sizes):
            continue
        for d, dim in enumerate(dims):
            values = [sz[d] for sz in sizes]
            if len(set(values)) > 1 and not dim.dim_param:
                dim.Clear()
                dim.dim_param = next((n for n, v in axes.items() if v == values), f"{out.name}_{d}")
                changed = resized = True
    if resized:  # the inner shapes the exporter annotated carry the same stale size: ORT infers its own
        del graph.graph.value_info[:]
    if changed:
        onnx.save(graph, str(path))


def _naming(model: nn.Module, specs: list[dict], dynamic: bool):
    """export_onnx's names and dynamic axes for ``model``, and the input specs of each check trial."""
    import inspect

    params = [p.name for p in inspect.signature(model.forward).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    inputs = params[: len(specs)] if len(params) >= len(specs) else None
    with torch.no_grad():
        outputs = output_names(model(*fresh_inputs(specs, torch.Generator().manual_seed(0))))
    naming = {"input_names": inputs, "output_names": outputs}
    if not dynamic or inputs is None:
        return naming, lambda trial: specs
    naming["dynamic_axes"] = {n: {d: a for d, a in ((0, "batch"), (1, "sequence")) if d < len(s["shape"])}
                              for n, s in zip(inputs, specs)}

    def shapes(trial):  # trial 0 exports; the others check other shapes
        if trial == 0:  # torch.export specialises a dimension of size 1: export at batch >= 2
            return [{**s, "shape": [max(2, d) if i == 0 else d for i, d in enumerate(s["shape"])]} for s in specs]
        grow = [1 + trial % 2, -(trial // 2 + 1)]  # one more row; a shorter sequence (fits position limits)
        return [{**s, "shape": [max(1, d + grow[i]) if i < 2 else d for i, d in enumerate(s["shape"])]} for s in specs]

    return naming, shapes


#: A candidate graph replaces the default one (the block-sparse ``Scan`` with the input as the left
#: operand of its block products) only when its median is below this fraction of the default's: a
#: tie within timing noise keeps the default (for the fused op: the Scan stores the packed weights,
#: smaller on disk), so two exports of one model do not pick differently by chance.
FUSED_MARGIN = 0.95


@contextlib.contextmanager
def _product_orders(model: nn.Module, products: dict[str, str]):
    """Set ``product_order`` of the recurrent modules at the given paths for the duration, then restore."""
    saved = {path: model.get_submodule(path).__dict__.get("product_order") for path in products}
    try:
        for path, product in products.items():
            model.get_submodule(path).product_order = product
        yield model
    finally:
        for path, old in saved.items():
            module = model.get_submodule(path)
            if old is None:
                module.__dict__.pop("product_order", None)  # back to the class default
            else:
                module.product_order = old


def _has_balanced(module: nn.Module, prefixes: tuple[str, ...] = ("hh_",)) -> bool:
    """Whether a projection of recurrent ``module`` named with one of ``prefixes`` is a balanced
    :class:`BlockSparseLinear` (the only products whose operand order can change)."""
    return any(type(m) is BlockSparseLinear and m.layout == "balanced"
               for name, m in module.proj.items() if name.startswith(prefixes))


def _ort_medians(files: dict[str, str | Path], inputs: tuple, repeats: int) -> dict[str, float]:
    """Median ms of ``repeats`` interleaved ORT runs (one thread, two warm-up calls) of each exported
    candidate graph ``name -> file`` on ``inputs`` (the graphs' inputs, in order)."""
    from .timing import time_interleaved

    fns = {}
    for name, file in files.items():
        session = ort_session(file, threads=1, spin=False)
        feed = {i.name: a.numpy() for i, a in zip(session.get_inputs(), inputs)}
        fns[name] = lambda r, s=session, f=feed: s.run(None, f)
    times = time_interleaved(fns, repeats=repeats, warmup=2)
    return {name: round(t["median_s"] * 1e3, 4) for name, t in times.items()}


def _faster_order(ms: dict[str, float]) -> str:
    """``weights_left`` where it beat ``input_left`` by more than :data:`FUSED_MARGIN` allows."""
    return "weights_left" if "weights_left" in ms and ms["weights_left"] < FUSED_MARGIN * ms["input_left"] \
        else "input_left"


def _recurrent_graphs(model: nn.Module, example: tuple, repeats: int = 15) -> dict[str, dict]:
    """For each ``SparseLSTM``/``SparseGRU`` of ``model``: ``{"graph": "scan" | "dense", "product",
    "scan_ms", "dense_ms", "ms": {candidate: ms}}``, from the medians of ``repeats`` interleaved ORT
    runs (one thread) of the module alone on the input it gets from ``example``, exported as its
    ``Scan`` graph with each operand order of the recurrent block product (:data:`PRODUCT_ORDERS`;
    ``weights_left`` only where a ``W_hh`` is balanced block-sparse) and as the dense module (ORT's
    fused op). ``product`` is the faster order (:func:`_faster_order`) and ``scan_ms`` its time;
    ``graph`` is ``dense`` where the fused op beats that by more than :data:`FUSED_MARGIN` allows.
    Why: at the built-in LM's size (hidden 256) the fused op ran the whole model at 1.1x the Scan
    graph's speed, while 1024-wide layers at 90% run 3-10x faster as the Scan; at batch 16 the
    weights-left product ran a 1536-wide GRU at 75% 1.4x faster than input-left, and at batch 1
    1.1x slower."""
    import tempfile

    seen: dict[str, torch.Tensor] = {}
    # exact types: a GatedLSTM is a SparseLSTM subclass whose dense form would drop its gates
    hooks = [m.register_forward_pre_hook(lambda mod, args, path=path: seen.setdefault(path, args[0].detach()))
             for path, m in model.named_modules() if type(m) in (SparseLSTM, SparseGRU)]
    try:
        with torch.no_grad():
            model(*example)
    finally:
        for h in hooks:
            h.remove()
    choices = {}
    with tempfile.TemporaryDirectory(prefix="compressor-recurrent-") as tmp:  # not in an artifact being written
        for path, x in seen.items():
            module = model.get_submodule(path)
            orders = [p for p in PRODUCT_ORDERS if p == "input_left" or _has_balanced(module)]
            try:
                files = {}
                for order in orders:
                    with _product_orders(module, {"": order}):
                        files[order] = export_onnx(module, (x,), Path(tmp) / f"{order}.onnx")
                files["dense"] = export_onnx(module.to_dense().eval(), (x,), Path(tmp) / "dense.onnx")
                ms = _ort_medians(files, (x,), repeats)
            except Exception as exc:  # a measurement, not the export: the module keeps its own graph
                choices[path] = {"graph": "scan", "product": "input_left", "error": first_line(exc)}
                continue
            product = _faster_order(ms)
            choices[path] = {"graph": "dense" if ms["dense"] < FUSED_MARGIN * ms[product] else "scan",
                             "product": product, "scan_ms": ms[product], "dense_ms": ms["dense"], "ms": ms}
    return choices


def _step_order(rnn: nn.Module, inputs: tuple, repeats: int = 15) -> tuple[str, dict[str, float] | None]:
    """``(order, ms)``: the operand order of the block products for ``rnn``'s step graph, timed in ORT
    both ways on ``inputs`` (``x_t`` and the states at the step batch) where a projection is balanced
    block-sparse; ``("input_left", None)`` otherwise or where the measurement fails."""
    import tempfile

    if not _has_balanced(rnn, ("ih_", "hh_")):
        return "input_left", None
    with tempfile.TemporaryDirectory(prefix="compressor-step-") as tmp:
        try:
            files = {}
            for order in PRODUCT_ORDERS:
                with _product_orders(rnn, {"": order}):
                    files[order] = export_onnx(rnn.step_module().eval(), inputs, Path(tmp) / f"{order}.onnx")
            ms = _ort_medians(files, inputs, repeats)
        except Exception:  # noqa: BLE001  (a measurement, not the export: the default order stays)
            return "input_left", None
    return _faster_order(ms), ms


def recurrent_graph_note(choice: dict) -> str:
    """One line on what ``model.onnx`` runs for a recurrent module (a ``recurrent`` entry of
    :func:`export_model`'s results)."""
    if "error" in choice:
        return f"runs as its block-sparse Scan graph (timing it against ONNX Runtime's fused op failed: {choice['error']})"
    scan, dense = f"{choice['scan_ms']:.3g} ms", f"{choice['dense_ms']:.3g} ms"
    order = f" ({_order_phrase(choice, '; ')})" if "weights_left" in choice.get("ms", {}) else ""
    if choice["graph"] == "dense":
        return (f"runs as ONNX Runtime's fused op on the zero-filled weights: {dense} against {scan} for its "
                f"block-sparse Scan graph{order}, measured alone at export")
    return (f"runs as its block-sparse Scan graph{order}: {scan} against {dense} for ONNX Runtime's fused op, "
            f"measured alone at export")


def step_graph_note(entry: dict) -> str | None:
    """One line on the operand order of a step graph's block products (an entry of
    :func:`export_model`'s results), or None where no order was timed."""
    if "product" not in entry:
        return None
    return f"{_order_phrase(entry, ': ', with_time=True)}, measured alone at export"


def _order_phrase(entry: dict, sep: str, with_time: bool = False) -> str:
    """``block products with the weights as left operand<sep>[X ms against ]Y ms with the input there``
    from an entry's ``product`` and ``ms``."""
    chosen = entry["product"]
    other = "input_left" if chosen == "weights_left" else "weights_left"
    own = f"{entry['ms'][chosen]:.3g} ms against " if with_time else ""
    return (f"block products with the {chosen.split('_')[0]} as left operand{sep}{own}"
            f"{entry['ms'][other]:.3g} ms with the {other.split('_')[0]} there")


def _step_graphs(model: nn.Module):
    """(path, step-capable module) for every unidirectional LSTM/GRU in ``model``."""
    for path, module in model.named_modules():
        if isinstance(module, (SparseLSTM, SparseGRU)) and not module.bidirectional:
            yield path, module
        elif isinstance(module, (nn.LSTM, nn.GRU)) and not module.bidirectional and not getattr(module, "proj_size", 0):
            yield path, (SparseLSTM if isinstance(module, nn.LSTM) else SparseGRU).from_dense(module, {}).eval()


def token_axes(source: dict) -> bool:
    """Whether a model from ``source`` (an artifact's ``source`` record) takes ``(batch, sequence)``
    inputs, so its ``model.onnx`` gets those dynamic axes: Hugging Face models and the built-in
    ones do (a ``--model`` factory's inputs may mean anything: its graph keeps the example's shape).
    Recurrent layers export as ``Scan`` loops, so one graph runs every sequence length."""
    return source.get("kind") in ("hf", "builtin")


def export_model(model: nn.Module, specs: list[dict], directory: str | Path, step: bool = True,
                 tolerance: float = 1e-4, trials: int = 3, seed: int = 0, step_batch: int = 2,
                 dynamic: bool = False, choose_recurrent: bool = True) -> dict:
    """Write ``model.onnx`` (and step graphs, whose inputs have ``step_batch`` rows: shapes are
    static) into ``directory``; returns the measured errors per graph.

    With ``choose_recurrent`` every ``SparseLSTM``/``SparseGRU`` is timed in ONNX Runtime on its own
    input shape as each candidate graph: its ``Scan`` graph (block-sparse step in a loop) with each
    operand order of the block products, and ORT's fused ``LSTM``/``GRU`` op on the same weights
    zero-filled; ``model.onnx`` gets the fastest, another candidate than the input-left ``Scan``
    only when faster by more than :data:`FUSED_MARGIN` allows (small layers: the fused op; the
    kept blocks of a 1024-wide layer: the ``Scan``), and the results' ``recurrent`` entry says
    which, with the times (:func:`_recurrent_graphs`). A step graph with balanced block-sparse
    weights is timed in both product orders at ``step_batch`` likewise (its entry's ``product``
    and ``ms``).

    ``model.onnx``'s inputs are named after the forward's parameters and its outputs after the
    output mapping's keys (a Hugging Face ``ModelOutput``: ``last_hidden_state``, ...). With
    ``dynamic`` (Hugging Face and built-in models: :func:`token_axes`) the first two dimensions of
    every input are the dynamic axes ``batch`` and ``sequence``, and ORT is checked at a batch and a
    sequence length other than the example's too."""
    if not specs:
        raise CompressorError("ONNX export needs example inputs: the artifact has none (pass --input when compressing)")
    directory = Path(directory)
    model = model.eval()

    naming, shapes = _naming(model, specs, dynamic)

    def inputs(trial):
        return fresh_inputs(shapes(trial), torch.Generator().manual_seed(seed * 1000 + trial))

    choices = _recurrent_graphs(model, inputs(0)) if choose_recurrent else {}
    exported = model
    if any(c["graph"] == "dense" for c in choices.values()):
        exported = copy.deepcopy(model)  # the caller's model keeps its sparse modules
        for path, c in choices.items():
            if c["graph"] == "dense":
                set_module(exported, path, model.get_submodule(path).to_dense().eval())
    products = {path: c["product"] for path, c in choices.items() if c["graph"] == "scan"}
    with _product_orders(exported, products):  # the caller's modules get their own order back
        results = {"model": _verified(directory / "model.onnx", exported, inputs, model, tolerance, trials, naming)}
    if choices:
        results["model"]["recurrent"] = choices
    if step:
        for path, rnn in _step_graphs(model):
            step_module = rnn.step_module().eval()
            n_state = 2 if isinstance(rnn, SparseLSTM) else 1

            def step_inputs(trial, rnn=rnn, n_state=n_state):
                gen = torch.Generator().manual_seed(seed * 1000 + trial)
                x = torch.randn(step_batch, rnn.input_size, generator=gen)
                states = [torch.randn(rnn.num_layers, step_batch, rnn.hidden_size, generator=gen) for _ in range(n_state)]
                return (x, *states)

            def full_sequence(x, *states, rnn=rnn):
                # one step of the full-sequence forward: the reference the step graph must match
                seq = x.unsqueeze(1) if rnn.batch_first else x.unsqueeze(0)
                hx = tuple(states) if len(states) > 1 else states[0]
                y, final = rnn(seq, hx)
                y = y[:, 0] if rnn.batch_first else y[0]
                return (y, *final) if isinstance(final, tuple) else (y, final)

            name = f"{path or 'model'}.step.onnx"
            order, order_ms = _step_order(rnn, step_inputs(0)) if choose_recurrent else ("input_left", None)
            with _product_orders(rnn, {"": order}):
                results[name] = _verified(directory / name, step_module, step_inputs, full_sequence, tolerance, trials)
            if order_ms is not None:
                results[name]["product"] = order
                results[name]["ms"] = order_ms
    return results

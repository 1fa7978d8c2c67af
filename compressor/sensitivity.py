"""Per-layer sensitivity curves: ``compress sensitivity --recipe R [--out DIR]``.

For every layer the recipe's first one-shot pass (``sparsegpt`` or ``wanda``, unstructured) selects,
and for every sparsity of a grid, that layer alone is pruned with the pass's own method and settings
on the dense model (every other layer dense), and the whole model's metric is measured:

- the model's held-out metric when it has one (the built-in LM's perplexity, the char encoder's
  masked perplexity), on the *validation* split where the model offers one (so that the test split the
  report and the benchmarks print stays unseen by the allocation), capped at ``--eval-tokens``;
- otherwise, when the pass calibrates on the ``text`` task (Hugging Face models), that task's held-out
  figure: perplexity for a causal LM, masked perplexity for a masked LM, else the embedding cosine
  to the dense model on the task's held-out sentences (``embedding_cosine_mean``);
- otherwise the relative output error on the example inputs against the dense model.

``DIR`` receives ``sensitivity.json`` (the curves; rewritten atomically after every point, so a run
killed at any moment resumes where it stopped: a rerun with the same pass, model and evaluation skips
the points already measured), ``sensitivity.html`` (the curves as a chart, and the table) and
``recipe.sensitivity.yaml``: the recipe with that pass set to ``allocation: sensitivity`` on these
curves at the budget ``--budget`` (default: the pass's ``sparsity``), with the per-layer sparsities the
allocation chooses (:func:`compressor.solvers.allocation.sensitivity_sparsities`) in its comments.

A layer's *cost* at a sparsity (what the allocation adds up over layers) is how much worse the model
got: the increase of ``ln(perplexity)`` (the per-token cross-entropy) for a perplexity, the drop of a
cosine, the increase of an error (:func:`metric_cost`).

The curves file is also read by the passes (``sensitivity: DIR/sensitivity.json``); it is untrusted
input: size-limited and checked field by field (:func:`read_curves`).
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import time
from pathlib import Path

from .errors import CompressorError
from .outputs import atomic_file

__all__ = ["SENSITIVITY_FILE", "RECIPE_FILE", "CHART_FILE", "ONESHOT_PASSES", "DEFAULT_SPARSITIES", "read_curves",
           "layer_costs", "metric_cost", "allocation_table", "SweepResult", "sweep", "render_table", "oneshot_step",
           "check_grid"]

SENSITIVITY_FILE = "sensitivity.json"
RECIPE_FILE = "recipe.sensitivity.yaml"
CHART_FILE = "sensitivity.html"
#: the one-shot passes whose ``sparsity`` a sweep varies
ONESHOT_PASSES = ("sparsegpt", "wanda")
DEFAULT_SPARSITIES = (0.3, 0.5, 0.7, 0.9)
FORMAT = 1
#: the largest curves file read (a few KB per layer)
MAX_BYTES = 16 << 20
#: keys of a one-shot step that do not change what one layer pruned alone at a given sparsity measures
_FREE_KEYS = ("sparsity", "allocation", "owl_threshold", "owl_lambda", "sensitivity")


def _bad(path, what: str) -> CompressorError:
    return CompressorError(f"{path}: {what}; make the curves again with `compress sensitivity --recipe R --out DIR`")


def _number(value, where: str, path) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _bad(path, f"{where} is not a finite number")
    return float(value)


def read_curves(path: str | Path) -> dict:
    """The curves of a ``sensitivity.json``, checked: {``metric``, ``higher_is_better``, ``dense``,
    ``pass``, ``layers``: {name: {``size``, ``points``: [{``sparsity``, ``measured_sparsity``, ``value``}]}}, ...}.
    A missing, oversized or malformed file is one :class:`CompressorError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise CompressorError(f"{path}: no such curves file; make it with `compress sensitivity --recipe R --out DIR` "
                              f"(it writes DIR/{SENSITIVITY_FILE})")
    if path.stat().st_size > MAX_BYTES:
        raise _bad(path, f"larger than {MAX_BYTES >> 20} MiB, not a curves file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad(path, f"not JSON ({type(exc).__name__})") from None
    if not isinstance(data, dict) or data.get("kind") != "compressor.sensitivity":
        raise _bad(path, "not a sensitivity curves file")
    if data.get("format") != FORMAT:
        raise _bad(path, f"format {str(data.get('format'))[:20]!r} is not supported (expected {FORMAT})")
    for key in ("metric", "pass", "fingerprint"):
        if not isinstance(data.get(key), str):
            raise _bad(path, f"'{key}' is missing or not a string")
    if not isinstance(data.get("higher_is_better"), bool):
        raise _bad(path, "'higher_is_better' is missing or not true/false")
    _number(data.get("dense"), "'dense'", path)
    layers = data.get("layers")
    if not isinstance(layers, dict):
        raise _bad(path, "'layers' is missing or not a mapping")
    for name, layer in layers.items():
        if not isinstance(layer, dict) or isinstance(layer.get("size"), bool) or not isinstance(layer.get("size"), int) \
                or layer["size"] < 1:
            raise _bad(path, f"layers.{str(name)[:80]}.size is missing or not a positive integer")
        points = layer.get("points")
        if not isinstance(points, list):
            raise _bad(path, f"layers.{str(name)[:80]}.points is not a list")
        for i, point in enumerate(points):
            where = f"layers.{str(name)[:80]}.points[{i}]"
            if not isinstance(point, dict):
                raise _bad(path, f"{where} is not a mapping")
            for key in ("sparsity", "measured_sparsity"):
                if not 0.0 <= _number(point.get(key), f"{where}.{key}", path) < 1.0:
                    raise _bad(path, f"{where}.{key} is outside [0, 1)")
            _number(point.get("value"), f"{where}.value", path)
    return data


def metric_cost(metric: str, value: float, dense: float, higher_is_better: bool) -> float:
    """How much worse ``value`` is than the dense model's ``dense``: for a perplexity the increase of its
    logarithm (the per-token cross-entropy in nats, which adds up over layers to first order), for a
    higher-is-better metric (a cosine) its drop, otherwise (an error) its increase."""
    if "perplexity" in metric and value > 0 and dense > 0:
        return math.log(value / dense)
    return dense - value if higher_is_better else value - dense


def layer_costs(curves: dict) -> dict[str, list[tuple[float, float]]]:
    """Each layer's measured ``(sparsity, cost)`` points (the sparsity its mask really has)."""
    return {name: [(p["measured_sparsity"], metric_cost(curves["metric"], p["value"], curves["dense"],
                                                        curves["higher_is_better"])) for p in layer["points"]]
            for name, layer in curves["layers"].items()}


def allocation_table(curves: dict, budget: float, names: list[str] | None = None) -> dict:
    """The ``sensitivity`` allocation of ``budget`` over ``names`` (default every layer of the curves), as
    the passes compute it: {``budget``, ``layers``: {name: sparsity}, ``counts``, ``predicted_cost``}."""
    from .solvers.allocation import budget_counts, interpolate, sensitivity_sparsities

    names = list(curves["layers"]) if names is None else names
    sizes = [curves["layers"][n]["size"] for n in names]
    costs = layer_costs(curves)
    sparsities = sensitivity_sparsities([costs[n] for n in names], sizes, budget)
    counts = budget_counts(sparsities, sizes, budget)
    predicted = sum(interpolate([(0.0, 0.0), *costs[n]], k / size) for n, k, size in zip(names, counts, sizes))
    return {"budget": budget, "layers": {n: k / size for n, k, size in zip(names, counts, sizes)},
            "counts": dict(zip(names, counts)), "predicted_cost": predicted}


@dataclasses.dataclass
class SweepResult:
    """What a sweep measured (``curves``, as written), how many points it evaluated now and how many it
    found done, the allocation at the budget, and the files it wrote."""

    curves: dict
    evaluated: int
    reused: int
    allocation: dict
    files: list[Path]


class _Metric:
    """The whole-model metric of a sweep (module docstring): ``name``, ``higher_is_better``, ``split`` and
    ``__call__(model) -> float``. A model's own metric is named by its first key (known after the first
    call, or from the curves a sweep resumes)."""

    def __init__(self, spec, config, dense, eval_tokens: int | None, name: str | None = None):
        import inspect

        self.split, self.name, self.higher_is_better = None, name, False
        if spec.evaluate is not None:
            kwargs = {"max_tokens": eval_tokens} if eval_tokens else {}
            if "split" in inspect.signature(spec.evaluate).parameters:  # the built-ins score valid or test
                kwargs["split"] = self.split = "valid"

            def own(model):
                values = spec.evaluate(model, **kwargs)
                self.name = self.name or next(iter(values))
                return values[self.name]

            self.fn = own
            return
        from .tasks import build_task
        from .text_task import TextTask

        name = config.calibration.name  # "auto" is the text task for a Hugging Face model (build_task)
        text = name == "text" or (name == "auto" and spec.source.get("kind") == "hf")
        task = build_task(config.calibration, spec, dense) if text else None
        if isinstance(task, TextTask):
            self.name, self.higher_is_better, self.split = {
                "causal_lm": ("perplexity", False, "held-out text"),
                "masked_lm": ("masked_perplexity", False, "held-out text"),
            }.get(task.objective, ("embedding_cosine_mean", True, "held-out sentences"))
            self.fn = lambda model: task.evaluate(model)[self.name]
        elif spec.example_inputs is not None:
            import torch

            from .kernels import flatten_outputs
            from .pipeline import output_error

            with torch.no_grad():
                reference = [o.clone() for o in flatten_outputs(dense(*spec.example_inputs)) if o.is_floating_point()]
            self.name = "output_rel_error"
            self.fn = lambda model: output_error(reference, model, spec.example_inputs)
        else:
            raise CompressorError("sensitivity: the model has no held-out metric, its pass does not calibrate on the "
                                  "text task, and it has no example inputs to compare outputs on; give --input")

    def __call__(self, model) -> float:
        return float(self.fn(model))


def oneshot_step(recipe) -> tuple[int, object]:
    """(index, entry) of the recipe's first sparsegpt/wanda pass, which must be unstructured (else one
    :class:`CompressorError`): the pass a sweep measures."""
    for i, entry in enumerate(recipe.passes):
        if entry.name in ONESHOT_PASSES:
            if entry.config.pattern != "unstructured":
                raise CompressorError(f"sensitivity: passes[{i}] ({entry.name}) has pattern: {entry.config.pattern}; the "
                                      "sweep varies the sparsity of an unstructured one-shot pass")
            return i, entry
    raise CompressorError(f"sensitivity: the recipe has no {' or '.join(ONESHOT_PASSES)} pass; the sweep measures the "
                          "layers of the first one")


def check_grid(sparsities, budget: float | None) -> list[float]:
    """The sorted grid of sparsities (each in (0, 1)); one :class:`CompressorError` for a bad grid or budget."""
    grid = sorted({round(float(s), 6) for s in sparsities})
    if not grid or any(not 0.0 < s < 1.0 for s in grid):
        raise CompressorError(f"sensitivity: --sparsities {','.join(map(str, sparsities))}: each must be in (0, 1)")
    if budget is not None and not 0.0 <= budget < 1.0:
        raise CompressorError(f"sensitivity: --budget {budget} must be in [0, 1)")
    return grid


def _prepare_out(out: Path, force: bool, fingerprint: str) -> dict | None:
    """The earlier curves to resume from (same fingerprint), or None to start; refuses what is not ours."""
    import shutil

    if out.exists() and not out.is_dir():
        raise CompressorError(f"--out {out} exists and is not a directory")
    curves_path = out / SENSITIVITY_FILE
    if out.is_dir() and not force:
        if curves_path.is_file():
            try:
                old = read_curves(curves_path)
            except CompressorError:
                old = None
            if old is not None and old["fingerprint"] == fingerprint:
                return old
            raise CompressorError(f"--out {out} holds curves of another pass, model or evaluation (or an unreadable "
                                  f"{SENSITIVITY_FILE}); choose another --out, or pass --force to start over")
        if any(out.iterdir()):
            raise CompressorError(f"--out {out} exists and holds no {SENSITIVITY_FILE}; choose another --out, or pass "
                                  "--force to replace it")
    if force and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return None


def _write_json(path: Path, data: dict) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def _pct(s: float) -> str:
    return f"{100 * s:.4g}%"


def sweep(recipe, spec, out: str | Path, sparsities=DEFAULT_SPARSITIES, budget: float | None = None,
          eval_tokens: int | None = None, force: bool = False, console=None, inputs=()) -> SweepResult:
    """Measure the curves of ``recipe``'s first one-shot pass on ``spec`` into ``out`` (module docstring).

    ``spec.model`` is left as it was (every point prunes a copy). ``inputs``: files the run reads (the
    recipe, a checkpoint), which ``out`` may not contain. Resumes from ``out`` when it holds curves of the
    same pass settings, model and evaluation; ``force`` starts over."""
    import copy

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from . import checkpoint as ckptlib
    from .capture import capture
    from .loading import no_metric
    from .outputs import claim_output, named_paths
    from .passes import get_pass
    from .pipeline import Pipeline
    from .recipe import PassEntry, Recipe
    from .targeting import resolve_targets

    console = console or Console(stderr=True)
    grid = check_grid(sparsities, budget)
    if eval_tokens is not None and eval_tokens < 256:
        raise CompressorError(f"--eval-tokens {eval_tokens}: score at least 256 tokens (a perplexity window is 128)")
    index, entry = oneshot_step(recipe)
    budget = entry.config.sparsity if budget is None else budget
    out = Path(out)
    step = {k: v for k, v in entry.to_dict().items() if k not in _FREE_KEYS}
    files = named_paths([step, spec.source])
    with claim_output(out, True, [*inputs, *files]):
        dense = spec.model.eval()
        captured = capture(dense, spec.example_inputs)
        targets = resolve_targets(captured.targets, entry.config.targets, entry.config.ignore,
                                  get_pass(entry.name).kinds, f"passes[{index}]")
        if not targets:
            raise CompressorError(f"sensitivity: passes[{index}] ({entry.name}) selects no layer")
        # what the points measure: the pass's settings (its sparsity and allocation aside), the model and
        # its input files, the evaluation; a rerun with the same identity resumes
        identity = {"step": step, "seed": recipe.seed, "eval_tokens": eval_tokens, "rule": FORMAT}
        fingerprint = ckptlib.fingerprint(json.dumps(identity, sort_keys=True), spec.source, None, files)
        old = _prepare_out(out, force, fingerprint)
        metric = _Metric(spec, entry.config, dense, eval_tokens, name=old["metric"] if old else None)
        if old is None:
            with console.status("evaluating the dense model"):
                dense_value = metric(dense)
        curves = old or {"kind": "compressor.sensitivity", "format": FORMAT, "fingerprint": fingerprint,
                         "pass": entry.name, "step": step, "model": spec.description or spec.source.get("kind", ""),
                         "metric": metric.name, "higher_is_better": metric.higher_is_better, "split": metric.split,
                         "eval_tokens": eval_tokens, "dense": dense_value, "layers": {}}
        for t in targets:
            curves["layers"].setdefault(t.name, {"size": t.shape[0] * t.shape[1], "shape": list(t.shape), "points": []})
        todo = [(t, s) for t in targets for s in grid
                if not any(p["sparsity"] == s for p in curves["layers"][t.name]["points"])]
        reused = len(targets) * len(grid) - len(todo)
        _write_json(out / SENSITIVITY_FILE, curves)
        quiet = Console(file=io.StringIO())
        columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn())
        with Progress(*columns, console=console, disable=not console.is_terminal) as progress:
            bar = progress.add_task(f"{entry.name}: {len(targets)} layer(s) x {len(grid)} sparsities", total=len(todo))
            for t, s in todo:
                progress.update(bar, description=f"{t.name} at {_pct(s)}")
                t0 = time.perf_counter()
                config = dataclasses.replace(entry.config, targets=(t.name,), ignore=(), sparsity=s,
                                             allocation="uniform", sensitivity=None,
                                             owl_threshold=type(entry.config)().owl_threshold,
                                             owl_lambda=type(entry.config)().owl_lambda)
                one = Recipe((PassEntry(entry.name, config),), seed=recipe.seed)
                pruned = dataclasses.replace(spec, model=copy.deepcopy(dense), evaluate=no_metric)
                result = Pipeline(one).run(pruned, console=quiet, captured=captured)
                mask = result.masks[t.name]
                value = metric(result.model)
                point = {"sparsity": s, "measured_sparsity": 1.0 - float(mask.sum()) / mask.numel(), "value": value,
                         "seconds": round(time.perf_counter() - t0, 3)}
                layer = curves["layers"][t.name]
                layer["points"] = sorted([*layer["points"], point], key=lambda p: p["sparsity"])
                _write_json(out / SENSITIVITY_FILE, curves)
                if not console.is_terminal:
                    console.print(f"{t.name} at {_pct(s)}: {metric.name} {value:.5g} ({point['seconds']:.1f} s)",
                                  markup=False)
                progress.advance(bar)
        names = [t.name for t in targets]
        try:
            allocation = allocation_table(curves, budget, names)
        except ValueError as exc:
            raise CompressorError(f"sensitivity: --budget {budget}: {exc}") from None
        curves["allocation"] = allocation
        _write_json(out / SENSITIVITY_FILE, curves)
        written = [out / SENSITIVITY_FILE, _write_recipe(out, recipe, index, entry, budget, allocation, curves)]
        from .recipe import load_recipe
        from .report_html import render_sensitivity_html, write_html

        load_recipe(out / RECIPE_FILE)  # the recipe a user runs next must load as written
        written.append(write_html(out / CHART_FILE, render_sensitivity_html(curves)))
    return SweepResult(curves, len(todo), reused, allocation, written)


def _write_recipe(out: Path, recipe, index: int, entry, budget: float, allocation: dict, curves: dict) -> Path:
    """``recipe.sensitivity.yaml``: ``recipe`` with passes[index] allocated on the curves at ``budget``."""
    import yaml

    data = recipe.to_dict()
    step = data["passes"][index]
    step.update(sparsity=budget, allocation="sensitivity", sensitivity=str(out / SENSITIVITY_FILE))
    for key in ("owl_threshold", "owl_lambda"):
        step.pop(key, None)
    width = max(len(n) for n in allocation["layers"])
    lines = [f"# {entry.name} (passes[{index}]) at a budget of {_pct(budget)} of its layers' weights, shared by the",
             f"# least predicted {curves['metric']} on the curves in {out / SENSITIVITY_FILE}",
             f"# (compress sensitivity; {curves['metric']} {curves['dense']:.5g} dense). Per-layer sparsities chosen:"]
    lines += [f"#   {n:<{width}}  {_pct(s)}" for n, s in allocation["layers"].items()]
    lines.append(f"# predicted cost {allocation['predicted_cost']:.4g} (the sum of the layers' measured costs)")
    path = out / RECIPE_FILE
    with atomic_file(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n" + yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def render_table(result: SweepResult, console=None) -> None:
    """The curves as a rich table: one row per layer, one column per sparsity, and the allocation."""
    from rich.console import Console
    from rich.table import Table

    curves, allocation = result.curves, result.allocation
    if console is None:
        probe = Console()
        console = probe if probe.is_terminal else Console(width=160)
    grid = sorted({p["sparsity"] for layer in curves["layers"].values() for p in layer["points"]})
    where = f" on {curves['split']}" if curves.get("split") else ""
    table = Table(title=f"sensitivity: {curves['pass']} on one layer at a time, {curves['metric']}{where} "
                        f"({curves['dense']:.5g} dense)")
    table.add_column("layer", overflow="fold")
    table.add_column("weights", justify="right")
    for s in grid:
        table.add_column(_pct(s), justify="right")
    table.add_column(f"allocated ({_pct(allocation['budget'])})", justify="right")
    for name, layer in curves["layers"].items():
        values = {p["sparsity"]: p["value"] for p in layer["points"]}
        table.add_row(name, f"{layer['size']:,}", *[f"{values[s]:.5g}" if s in values else "-" for s in grid],
                      _pct(allocation["layers"][name]))
    console.print(table)
    console.print(f"predicted cost of the allocation: {allocation['predicted_cost']:.4g} "
                  f"({'ln ' + curves['metric'] + ' increase' if 'perplexity' in curves['metric'] else curves['metric']})",
                  markup=False)

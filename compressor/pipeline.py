"""The pipeline: capture the layers, run the recipe's passes in order, finalize, report, save.

Everything that can be checked is checked before the model changes: the recipe (when it was
loaded), the output directory, the weights (no NaN/Inf) and every pass's ``targets``/``ignore``
patterns against the captured layers. Artifacts are written atomically at the very end, so
any failure leaves nothing behind.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from . import masks as masklib
from .artifacts import check_output_dir, save_artifacts
from .capture import CaptureResult, Target, capture
from .loading import ModelSpec, check_finite
from .passes import get_pass
from .patterns import Dense, Pattern
from .recipe import Recipe
from .report import Report, compute_totals, layer_row
from .targeting import resolve_targets

__all__ = ["LayerRecord", "CompressionState", "Pipeline", "PipelineResult", "output_error"]


@dataclass
class LayerRecord:
    """What the passes did to one target so far."""

    target: Target
    pattern: Pattern = field(default_factory=Dense)
    target_sparsity: float = 0.0
    passes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class CompressionState:
    """What passes see: the model, its targets, and mask access that handles tied weights."""

    def __init__(self, spec: ModelSpec, captured: CaptureResult, recipe: Recipe, work_dir: Path | None = None):
        self.spec = spec
        self.model = spec.model
        self.capture = captured
        self.recipe = recipe
        self.work_dir = work_dir
        self.targets = captured.by_name()
        self.layers = {name: LayerRecord(t) for name, t in self.targets.items()}

    def weight(self, target: Target) -> torch.Tensor:
        """The effective (masked) weight of ``target``, detached."""
        return getattr(self.model.get_submodule(target.module_path), target.param_name).detach()

    def mask(self, target: Target) -> torch.Tensor | None:
        """The current mask of ``target``, or None while it is dense."""
        return masklib.get_mask(self.model, target.name)

    def set_mask(self, target: Target, mask: torch.Tensor) -> None:
        """Install or tighten the mask of ``target`` and of every tied alias."""
        masklib.set_mask(self.model, target.name, mask)
        for alias in target.aliases:
            module_path, param = masklib.split_name(alias)
            if tuple(getattr(self.model.get_submodule(module_path), param).shape) == tuple(mask.shape):
                masklib.set_mask(self.model, alias, mask)


@dataclass
class PipelineResult:
    """The compressed (finalized) model, its masks, the report, and where it was written."""

    model: nn.Module
    masks: dict[str, torch.Tensor]
    report: Report
    out: Path | None


def _flat_outputs(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict) or hasattr(out, "values"):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _flat_outputs(o)]
    return []


@torch.no_grad()
def output_error(reference: list[torch.Tensor], model: nn.Module, inputs: tuple) -> float:
    """Relative L2 error of ``model``'s floating outputs on ``inputs`` against ``reference``."""
    outs = [o for o in _flat_outputs(model(*inputs)) if o.is_floating_point()]
    num = sum(float((o - r).float().pow(2).sum()) for o, r in zip(outs, reference))
    den = sum(float(r.float().pow(2).sum()) for r in reference)
    return (num / den) ** 0.5 if den else 0.0


class Pipeline:
    """Runs a validated :class:`Recipe` on a loaded model."""

    def __init__(self, recipe: Recipe):
        self.recipe = recipe

    def plan(self, captured: CaptureResult) -> list[tuple]:
        """Resolve every pass's targets against the captured layers (errors before any change)."""
        plan = []
        for i, entry in enumerate(self.recipe.passes):
            spec = get_pass(entry.name)
            targets = resolve_targets(
                captured.targets, entry.config.targets, entry.config.ignore, spec.kinds, f"passes[{i}]"
            )
            plan.append((entry, spec, targets))
        return plan

    def run(self, spec: ModelSpec, out: str | Path | None = None, force: bool = False, console=None) -> PipelineResult:
        """Compress ``spec.model`` in place and, if ``out`` is given, write the artifacts."""
        from rich.console import Console
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        console = console or Console(stderr=True)
        start = time.perf_counter()
        out = Path(out) if out is not None else None
        if out is not None:
            check_output_dir(out, force)
        check_finite(spec.model)
        torch.manual_seed(self.recipe.seed)
        model = spec.model
        model.eval()
        captured = capture(model, spec.example_inputs)
        plan = self.plan(captured)
        state = CompressionState(spec, captured, self.recipe)

        metrics: dict[str, dict[str, float]] = {}
        reference = None
        if spec.example_inputs is not None:
            with torch.no_grad():
                reference = [o.clone() for o in _flat_outputs(model(*spec.example_inputs)) if o.is_floating_point()]
        if spec.evaluate is not None:
            with console.status("evaluating the original model"):
                for k, v in spec.evaluate(model).items():
                    metrics.setdefault(k, {})["before"] = v

        pass_log = []
        columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=False, disable=not console.is_terminal) as progress:
            task = progress.add_task("passes", total=len(plan))
            for i, (entry, pass_spec, targets) in enumerate(plan):
                progress.update(task, description=f"[{i + 1}/{len(plan)}] {entry.name} on {len(targets)} layer(s)")
                t0 = time.perf_counter()
                result = pass_spec.fn(state, entry.config, targets)
                for name, info in result.layers.items():
                    record = state.layers[name]
                    record.pattern = info["pattern"]
                    record.target_sparsity = info["target_sparsity"]
                    record.passes.append(entry.name)
                    record.notes += info.get("notes", [])
                for name, reason in result.skipped.items():
                    state.layers[name].notes.append(f"{entry.name} skipped: {reason}")
                pass_log.append({
                    "pass": entry.name, "layers": sorted(result.layers), "skipped": result.skipped,
                    "notes": result.notes, "metrics": result.metrics, "seconds": round(time.perf_counter() - t0, 3),
                })
                progress.advance(task)
            if not console.is_terminal:
                for log in pass_log:
                    console.print(f"pass {log['pass']}: {len(log['layers'])} layer(s) in {log['seconds']}s")

        final_masks = masklib.finalize(model)
        if reference is not None:
            metrics["output_rel_error"] = {"after": output_error(reference, model, spec.example_inputs)}
        if spec.evaluate is not None:
            with console.status("evaluating the compressed model"):
                for k, v in spec.evaluate(model).items():
                    metrics.setdefault(k, {})["after"] = v

        rows = [
            layer_row(t, self._weight(model, t), r.pattern, r.target_sparsity, r.passes, r.notes)
            for t, r in ((state.targets[n], state.layers[n]) for n in state.targets)
        ]
        report = Report(
            model=spec.description or spec.source.get("kind", "model"),
            capture={"method": captured.method, "attempts": [list(a) for a in captured.attempts]},
            layers=rows,
            totals=compute_totals(rows, model),
            metrics=metrics,
            passes=pass_log,
            recipe=self.recipe.source,
            created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            elapsed_s=round(time.perf_counter() - start, 3),
        )
        if out is not None:
            patterns = {n: r.pattern.to_dict() for n, r in state.layers.items()}
            save_artifacts(out, model, final_masks, spec.source, patterns, self.recipe.to_yaml(), report, force)
        return PipelineResult(model, final_masks, report, out)

    @staticmethod
    def _weight(model: nn.Module, target: Target) -> torch.Tensor:
        return getattr(model.get_submodule(target.module_path), target.param_name).detach()

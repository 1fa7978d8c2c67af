"""The pipeline: capture the layers, run the recipe's passes in order, finalize, report, save.

:meth:`Pipeline.run` is a short sequence of named steps: claim the output, prepare the resume
point, check and capture the model and plan every pass (``_prepare_state``), record the dense
outputs and metric, run the passes (``_run_passes``: each pass's errors name ``passes[i] (name)``,
its result must hold a :class:`LayerUpdate` per layer, of its own targets only, and its masks must stay bool, shaped
like their weights and only shrink), bake the masks (``_finish_masks``), measure again, then
export ONNX, build the report (:func:`compressor.report.build_report`) and write the artifact
(``_report_and_save``).

Everything that can be checked is checked before the model changes: the recipe (when it was
loaded), the output directory, the weights (no NaN/Inf) and every pass's ``targets``/``ignore``
patterns against the captured layers. Artifacts are written atomically at the very end, so
any failure leaves nothing behind.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from contextlib import ExitStack
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
import torch.nn as nn

from . import checkpoint as ckptlib
from . import masks as masklib
from .artifacts import save_artifacts
from .outputs import check_output, claim_output, named_paths, scratch_directory
from .capture import CaptureResult, Target, capture
from .distributed import broadcast_tensors, current
from .errors import ArtifactError, CompressorError, RecipeError, TargetError, first_line
from .loading import ModelSpec, check_finite
from .passes import LayerUpdate, PassResult, PassSpec, get_pass
from .patterns import Dense, Pattern, pattern_from_dict
from .recipe import PassEntry, Recipe
from .progress import NoProgress, Progress, pipeline_progress
from .report import Report, build_report, onnx_metric
from .export import ExportError, export_model, input_specs, recurrent_graph_note, step_graph_note, token_axes
from .kernels import flatten_outputs
from .swaps import Replacement, densify, replay
from .tasks import TaskConfig
from .targeting import explain_selection, resolve_targets

__all__ = ["LayerRecord", "CompressionState", "Pipeline", "PipelineResult", "output_error"]


@dataclass
class LayerRecord:
    """What the passes did to one target so far (their layer updates, merged in pass order); the
    layer's report row is built from it (:func:`compressor.report.build_report`)."""

    target: Target
    pattern: Pattern = field(default_factory=Dense)
    target_sparsity: float = 0.0
    passes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    kernel: str | None = None
    speedup: float | None = None
    #: report-row figures a pass measured itself (a gated layer's), instead of the row's own
    compressed_flops: int | None = None
    block_keep_frequency: list[list[float]] | None = None

    def apply(self, update: LayerUpdate, pass_name: str) -> None:
        """Merge what pass ``pass_name`` did to the layer (fields it left None keep their value)."""
        if update.pattern is not None:
            self.pattern, self.target_sparsity = update.pattern, update.target_sparsity
        if update.kernel is not None:
            self.kernel = update.kernel
        if update.speedup is not None:
            self.speedup = update.speedup
        if update.compressed_flops is not None:
            self.compressed_flops = update.compressed_flops
        if update.block_keep_frequency is not None:
            self.block_keep_frequency = update.block_keep_frequency
        self.passes.append(pass_name)
        self.notes += update.notes

    def row_fields(self) -> dict:
        """The report-row figures a pass measured, as checkpoints store them (``row``)."""
        return {k: v for k, v in (("compressed_flops", self.compressed_flops),
                                  ("block_keep_frequency", self.block_keep_frequency)) if v is not None}


class CompressionState:
    """What passes see: the model, its targets, mask access that handles tied weights, the
    tasks and dense teacher of training passes, and checkpointing for --resume."""

    def __init__(self, spec: ModelSpec, captured: CaptureResult, recipe: Recipe, work_dir: Path | None = None,
                 console=None, fingerprint: str = ""):
        from rich.console import Console

        self.spec = spec
        self.model = spec.model
        self.capture = captured
        self.recipe = recipe
        self.work_dir = work_dir
        self.console = console or Console(stderr=True)
        self.fingerprint = fingerprint
        self.targets = captured.by_name()
        self.layers = {name: LayerRecord(t) for name, t in self.targets.items()}
        self.reference: nn.Module | None = None  # the dense model before any pass (teacher, calibration)
        self.teacher: nn.Module | None = None  # a caller's teacher for distillation, instead of the reference
        self.progress: Progress = NoProgress()  # the pipeline's bars while it runs; training loops add theirs
        self.pass_index = 0
        self.pass_log: list[dict] = []
        self.resume: dict | None = None
        self._tasks: dict = {}
        #: modules replaced (kernel swaps, gated layers; replayed by compressor.load) and the masks they baked in
        self.replacements: list[Replacement] = []
        self.baked_masks: dict[str, torch.Tensor] = {}

    def task(self, config, needs: tuple[str, ...] = ("batch",), where: str = "task"):
        """The task a pass asks for (built once per config); a user task must have the methods in
        ``needs`` (:func:`compressor.tasks.check_task`; ``where``: its recipe path)."""
        from .tasks import build_task, check_task

        if config not in self._tasks:
            teacher = self.teacher if self.teacher is not None else self.reference
            self._tasks[config] = build_task(config, self.spec, teacher, needs, where)
        else:  # the same config may serve another use, which calls other methods
            check_task(self._tasks[config], needs, config.name, f"{where}.name")
        return self._tasks[config]

    def sync_masks(self) -> None:
        """Under torchrun, make every rank's masks equal to rank 0's."""
        broadcast_tensors([m for _, m in masklib.iter_masks(self.model)])

    def take_resume_point(self) -> dict | None:
        """The checkpoint taken inside the current pass, once (the loop resumes from it)."""
        point = self.resume
        if point is not None and point["pass_index"] == self.pass_index and point["step"] is not None:
            self.resume = None
            return point
        return None

    def save_checkpoint(self, step: int | None = None, **loop_state) -> None:
        """Write a resume point: inside the current pass at ``step``, or after it (``step=None``)."""
        if self.work_dir is None or not current().is_main:
            return
        payload = {
            "fingerprint": self.fingerprint,
            "pass_index": self.pass_index if step is not None else self.pass_index + 1,
            "step": step,
            # kernel modules (swap_kernels) are saved in their dense form, as in an artifact, and
            # rebuilt on restore from these weights and the masks they baked in
            "model": (densify(self.model) if any(not r.structural for r in self.replacements)
                      else self.model).state_dict(),
            "masks": dict(masklib.iter_masks(self.model)),
            "baked_masks": dict(self.baked_masks),
            "layers": {n: {"pattern": r.pattern.to_dict(), "target_sparsity": r.target_sparsity,
                           "passes": r.passes, "notes": r.notes, "row": r.row_fields()} for n, r in self.layers.items()},
            "replacements": [r.to_json() for r in self.replacements],  # plain data: read with weights_only
            "pass_log": self.pass_log,
            "rng": torch.get_rng_state(),
            **loop_state,
        }
        ckptlib.save_checkpoint(self.work_dir, payload)

    def restore(self, payload: dict) -> int:
        """Load a checkpoint into the model and records; returns the pass index to continue at."""
        # modules with parameters of their own (gated layers) first, so the saved state fits
        try:
            self.replacements = [Replacement.from_json(r, f"replacements[{i}]")
                                 for i, r in enumerate(payload.get("replacements", []))]
        except ValueError as exc:
            raise CompressorError(f"--resume: the checkpoint is damaged ({exc}); run without --resume (with --force) "
                                  "to start over") from None
        replay(self.model, self.replacements, structural=True)
        for name, mask in payload["masks"].items():
            masklib.set_mask(self.model, name, mask, intersect=False)
        self.model.load_state_dict(payload["model"])
        self.baked_masks = dict(payload.get("baked_masks", {}))
        replay(self.model, self.replacements, self.baked_masks)  # kernel swaps, on the loaded weights
        for name, rec in payload["layers"].items():
            record = self.layers[name]
            record.pattern = pattern_from_dict(rec["pattern"])
            record.target_sparsity = rec["target_sparsity"]
            record.passes, record.notes = list(rec["passes"]), list(rec["notes"])
            row = rec.get("row", {})
            record.compressed_flops, record.block_keep_frequency = row.get("compressed_flops"), row.get("block_keep_frequency")
        self.pass_log = list(payload["pass_log"])
        torch.set_rng_state(payload["rng"])
        self.resume = payload
        return payload["pass_index"]

    def weight(self, target: Target) -> torch.Tensor:
        """The effective (masked) weight of ``target``, detached."""
        return getattr(self.model.get_submodule(target.module_path), target.param_name).detach()

    def weight_live(self, target: Target) -> torch.Tensor:
        """The effective weight of ``target`` with its autograd graph (for regularisers)."""
        return getattr(self.model.get_submodule(target.module_path), target.param_name)

    def original(self, target: Target) -> torch.Tensor:
        """The trainable parameter behind ``target`` (unmasked), for in-place updates."""
        return masklib.original_weight(self.model, target.name)

    def mask(self, target: Target) -> torch.Tensor | None:
        """The current mask of ``target``, or None while it is dense."""
        return masklib.get_mask(self.model, target.name)

    def set_mask(self, target: Target, mask: torch.Tensor, intersect: bool = True) -> None:
        """Install or tighten the mask of ``target`` and of every tied alias (``intersect=False``:
        replace it, so weights an earlier mask removed may come back)."""
        masklib.set_mask(self.model, target.name, mask, intersect=intersect)
        for alias in target.aliases:
            module_path, param = masklib.split_name(alias)
            if tuple(getattr(self.model.get_submodule(module_path), param).shape) == tuple(mask.shape):
                masklib.set_mask(self.model, alias, mask, intersect=intersect)


@dataclass
class PipelineResult:
    """The compressed (finalized) model, its masks, the report, and where it was written."""

    model: nn.Module
    masks: dict[str, torch.Tensor]
    report: Report
    out: Path | None


@torch.no_grad()
def output_error(reference: list[torch.Tensor], model: nn.Module, inputs: tuple) -> float:
    """Relative L2 error of ``model``'s floating outputs on ``inputs`` against ``reference``."""
    outs = [o for o in flatten_outputs(model(*inputs)) if o.is_floating_point()]
    num = sum(float((o - r).float().pow(2).sum()) for o, r in zip(outs, reference))
    den = sum(float(r.float().pow(2).sum()) for r in reference)
    return (num / den) ** 0.5 if den else 0.0


def _masks_now(state: CompressionState, targets: list[Target]) -> dict[str, torch.Tensor]:
    """The masks of ``targets`` before a pass (copies: a pass may change them in place)."""
    masks = {}
    for t in targets:
        mask = state.mask(t)
        if mask is not None:
            masks[t.name] = mask.detach().clone()
    return masks


def _check_masks(state: CompressionState, targets: list[Target], before: dict[str, torch.Tensor], regrows: bool,
                 where: str) -> None:
    """Cheap invariants after every pass: masks are bool, shaped like their weights, and only shrink
    (unless the pass may bring weights back). A violation is a bug of the pass, reported as one."""
    for t in targets:
        mask = state.mask(t)
        if mask is None:
            continue
        if mask.dtype != torch.bool or tuple(mask.shape) != tuple(state.weight(t).shape):
            raise RuntimeError(f"{where} left a mask on {t.name} of dtype {mask.dtype} and shape {tuple(mask.shape)}; "
                               f"expected bool {tuple(state.weight(t).shape)} (a bug in the pass)")
        old = before.get(t.name)
        if old is not None and not regrows and bool((mask & ~old).any()):
            raise RuntimeError(f"{where} brought back {int((mask & ~old).sum())} weights of {t.name} an earlier mask "
                               "removed (a bug in the pass: masks only shrink)")


def _evaluate(evaluate, model: nn.Module, max_tokens: int | None) -> dict[str, float]:
    """The held-out metric ``evaluate`` gives, on at most ``max_tokens`` tokens when a cap is given."""
    return evaluate(model, max_tokens=max_tokens) if max_tokens else evaluate(model)


def held_out_metric(spec: ModelSpec, recipe: Recipe, console):
    """What the report measures before and after the passes: the model's own held-out metric
    (``spec.evaluate``); for a Hugging Face model without one, the ``text`` task's evaluation on
    held-out tokenized text (:mod:`compressor.text_task`: perplexity for a causal LM, masked
    perplexity for a masked LM, else the sentence-embedding cosine to the model as it is now, before
    any pass), with the corpus and settings of the recipe's first text task (the defaults when it has
    none). None when there is nothing to measure; a model directory without a usable tokenizer gets a
    note instead of a metric."""
    if spec.evaluate is not None:
        return spec.evaluate
    if (spec.source or {}).get("kind") != "hf":
        return None
    from .text_task import TextTask

    uses = [use for entry in recipe.passes for use, _, _ in task_uses(entry.config, "")]
    config = next((c for c in uses if c.name in ("text", "auto")), TaskConfig(name="text"))
    try:
        task = TextTask(dataclasses.replace(config, name="text"), spec, None)
        with console.status("measuring the held-out text metric of the original model"):
            task.set_reference(spec.model)
    except CompressorError as exc:
        console.print(f"no held-out text metric in the report: {first_line(exc, 200)}", markup=False)
        return None
    return lambda model, max_tokens=None: task.evaluate(model, max_tokens)


def _check_block_fits(config, targets: list[Target], path: str) -> None:
    """A block larger than a selected matrix (or than one LSTM/GRU gate, unless blocks may cross
    gates) in both dimensions makes the whole layer one partial block, which a pass can only keep
    or remove whole: refuse it before any layer changes. (Larger in one dimension only is fine:
    the edge blocks are partial, as for any shape that is not a multiple of the block.)"""
    block = getattr(config, "block", None)
    if block is None:
        return
    for t in targets:
        rows, per_gate = t.shape[0], bool(t.gates) and not getattr(config, "cross_gates", False)
        if per_gate:
            rows = min(end - start for _, start, end in t.gates)
        if block[0] >= rows and block[1] >= t.shape[1] and rows * t.shape[1] > 1:
            raise RecipeError(f"{path}.block", f"{list(block)} covers all of layer {t.name} ({rows} x {t.shape[1]}"
                                               f"{' per gate' if per_gate else ''}), which would be one block; choose a "
                                               "smaller block or add the layer to 'ignore'")


def task_uses(config, path: str) -> list[tuple[TaskConfig, str, tuple[str, ...]]]:
    """(task config, its recipe path, the task methods that use calls) for each task a pass config names:
    a task of the pass itself (``calibration``) is recorded as calibration inputs; ``train.task`` is
    trained on (``evaluate`` only when ``eval_every`` > 0), and its inputs are recorded too where the pass
    maps calibration batches of it (``dynamic_gate``'s ``calibration_batches``: the keep-frequency map)."""
    from .tasks import CALIBRATION_METHODS, TRAINING_METHODS
    from .training import TrainConfig

    uses = []
    for f in fields(config):
        value = getattr(config, f.name)
        if isinstance(value, TaskConfig):
            uses.append((value, f"{path}.{f.name}", CALIBRATION_METHODS))
        elif isinstance(value, TrainConfig):
            needs = [m for m in TRAINING_METHODS if m != "evaluate" or value.eval_every]
            if getattr(config, "calibration_batches", 0):
                needs.append("inputs")
            uses.append((value.task, f"{path}.{f.name}.task", tuple(needs)))
    return uses


#: one step of the plan: the recipe's entry, its registered pass, the layers it selects
PlannedPass = tuple[PassEntry, PassSpec, list[Target]]


class Pipeline:
    """Runs a validated :class:`Recipe` on a loaded model."""

    def __init__(self, recipe: Recipe):
        self.recipe = recipe

    def plan(self, captured: CaptureResult) -> list[PlannedPass]:
        """Resolve every pass's targets against the captured layers (errors before any change: an entry
        that matches nothing, or a pass whose selection comes out empty)."""
        plan = []
        for i, entry in enumerate(self.recipe.passes):
            spec = get_pass(entry.name)
            targets = resolve_targets(
                captured.targets, entry.config.targets, entry.config.ignore, spec.kinds, f"passes[{i}]"
            )
            if not targets:  # it would report nothing done while a training pass still trained every weight
                raise TargetError(
                    f"passes[{i}] ({entry.name}) selects no layer: "
                    f"{explain_selection(captured.targets, entry.config.targets, entry.config.ignore, spec.kinds)}"
                )
            _check_block_fits(entry.config, targets, f"passes[{i}]")
            plan.append((entry, spec, targets))
        return plan

    def run(self, spec: ModelSpec, out: str | Path | None = None, force: bool = False, console=None,
            resume: bool = False, teacher: nn.Module | None = None, eval_tokens: int | None = None,
            captured: CaptureResult | None = None) -> PipelineResult:
        """Compress ``spec.model`` in place and, if ``out`` is given, write the artifacts.

        With ``resume`` the run continues from the checkpoint a killed run with the same
        recipe, model and ``out`` left in ``.OUT.work/``. ``teacher``: the model the ``distill``
        task and ``task.distill_weight`` match (same inputs and outputs as ``spec.model``; not
        modified); default: a copy of ``spec.model`` as it was before any pass.
        ``eval_tokens``: score the held-out metric (``spec.evaluate``) on at most this many tokens
        (tests and quick runs; None: the whole held-out split). ``captured``: the layers of
        ``spec.model`` found by an earlier :func:`compressor.capture` of the same architecture (a copy
        of that model: ``compress sensitivity`` prunes one copy per point), to skip capturing again.
        """
        from rich.console import Console

        console = console or Console(stderr=True)
        info = current()
        start = time.perf_counter()
        out = Path(out) if out is not None else None
        inputs = named_paths([self.recipe.source, self.recipe.to_dict(), spec.source])
        with ExitStack() as claims:
            if out is not None and info.is_main:  # exclusive for the whole run; other ranks never write
                leftovers: list[str] = []
                claims.enter_context(claim_output(out, force, inputs, notes=leftovers))
                for note in leftovers:
                    console.print(note)
            elif out is not None:
                check_output(out, force, inputs)
            return self._run(spec, out, force, console, resume, teacher, inputs, start, eval_tokens, captured)

    def _run(self, spec: ModelSpec, out: Path | None, force: bool, console, resume: bool, teacher: nn.Module | None,
             inputs: list[Path], start: float, eval_tokens: int | None,
             captured: CaptureResult | None = None) -> PipelineResult:
        work_dir, fingerprint, payload = self._prepare_resume(spec, out, force, resume, teacher, inputs)
        state, plan = self._prepare_state(spec, console, captured, work_dir, fingerprint, teacher)
        reference = _reference_outputs(spec)
        metrics: dict[str, dict[str, float]] = {}
        evaluate = held_out_metric(spec, self.recipe, console)
        _measure(spec, evaluate, eval_tokens, console, "before", metrics)
        first = state.restore(payload) if payload is not None else 0
        self._run_passes(state, plan, first, work_dir is not None)
        final_masks = _finish_masks(state)
        if reference is not None:
            metrics["output_rel_error"] = {"after": output_error(reference, spec.model, spec.example_inputs)}
        _measure(spec, evaluate, eval_tokens, console, "after", metrics)
        elapsed = time.perf_counter() - start  # the compression, as before the export was in the report
        writes = out is not None and current().is_main
        report = self._report_and_save(state, out if writes else None, force, final_masks, metrics, elapsed)
        if writes:
            ckptlib.remove_work_dir(work_dir)
        return PipelineResult(spec.model, final_masks, report, out if current().is_main else None)

    def _report_and_save(self, state: CompressionState, out: Path | None, force: bool,
                         final_masks: dict[str, torch.Tensor], metrics: dict[str, dict[str, float]],
                         elapsed: float) -> Report:
        """Export ONNX (when the recipe asks and there is an ``out``), build the report, write the
        artifact to ``out``. The export comes first, into a scratch folder beside ``out``, so the
        report holds its errors (and the notes on layers without a step graph) before it is written."""
        with ExitStack() as scratch:
            onnx, failure = OnnxExport(), None
            if out is not None and self.recipe.export.onnx:
                try:
                    onnx = self._export_onnx(state, scratch.enter_context(scratch_directory(out)))
                except Exception as exc:  # the compressed model is kept: written without graphs, then the error
                    failure = first_line(exc, 300)
                    state.console.print(f"ONNX export failed: {failure}", markup=False)
            report = build_report(state, final_masks, {**metrics, **onnx.metrics}, onnx.notes, elapsed)
            report.export_error = failure
            if out is not None:
                model, spec = state.model, state.spec
                save_artifacts(out, densify(model) if state.replacements else model, final_masks, spec.source,
                               {n: r.pattern.to_dict() for n, r in state.layers.items()}, self.recipe.to_yaml(), report,
                               force, exported=onnx.directory, replacements=state.replacements,
                               inputs=input_specs(spec.example_inputs))
        if failure is not None:
            raise ExportError(f"the compressed artifact is in {out}, without ONNX graphs: the export failed "
                              f"({failure}); retry with `compress export {out}` once the cause is fixed")
        return report

    def _prepare_resume(self, spec: ModelSpec, out: Path | None, force: bool, resume: bool,
                        teacher: nn.Module | None, inputs: list[Path]) -> tuple[Path | None, str, dict | None]:
        """(the work directory of checkpoints, their fingerprint, the checkpoint to resume from): a
        recipe that trains checkpoints into ``.OUT.work/``; a run without --resume finding one there
        needs --force, which removes it."""
        trains = any(get_pass(e.name).trains for e in self.recipe.passes)
        work_dir = ckptlib.work_dir_for(out) if (out is not None and trains) else None
        # identifies the checkpoints, so only computed when there are any (it hashes a teacher's weights)
        fingerprint = ckptlib.fingerprint(self.recipe.to_yaml(), spec.source, teacher, inputs) if work_dir is not None else ""
        payload = None
        if resume:
            if work_dir is None:
                raise ArtifactError("--resume needs --out (the run's output directory) and a recipe with a training pass")
            payload = ckptlib.load_checkpoint(work_dir, fingerprint)
        elif work_dir is not None and ckptlib.has_checkpoint(work_dir):
            if not force:
                raise ArtifactError(
                    f"an interrupted run left a checkpoint in {work_dir}; pass --resume to continue it or --force to start over"
                )
            ckptlib.remove_work_dir(work_dir)
        return work_dir, fingerprint, payload

    def _prepare_state(self, spec: ModelSpec, console, captured: CaptureResult | None, work_dir: Path | None,
                       fingerprint: str, teacher: nn.Module | None) -> tuple[CompressionState, list[PlannedPass]]:
        """Check the weights, capture and plan (errors before any change), and build the passes' state:
        the dense reference and the teacher where passes need them, the tasks that can be checked early."""
        check_finite(spec.model)
        torch.manual_seed(self.recipe.seed)
        model = spec.model
        model.eval()
        captured = captured or capture(model, spec.example_inputs)
        if not captured.targets:
            raise TargetError(f"found no linear or recurrent layer to compress in {spec.description or 'the model'} "
                              f"(capture method: {captured.method}); nothing was written")
        plan = self.plan(captured)
        state = CompressionState(spec, captured, self.recipe, work_dir, console, fingerprint)
        trains = any(p.trains for _, p, _ in plan)
        # the model before any pass: for calibration, and as the default teacher of training passes
        if any(p.needs_reference for _, p, _ in plan) or (trains and teacher is None):
            state.reference = copy.deepcopy(model).eval()
        if teacher is not None:
            state.teacher = copy.deepcopy(teacher).eval()  # the task freezes it; the caller's stays as it was
        # before any pass changes a layer: a text task checks its tokenizer against the model's embedding,
        # a user task is built and must have the methods each of its uses calls
        for i, entry in enumerate(self.recipe.passes):
            for config, where, needs in task_uses(entry.config, f"passes[{i}]"):
                if config.name == "text" or ":" in config.name:
                    state.task(config, needs, where)
        return state, plan

    def _run_passes(self, state: CompressionState, plan: list[PlannedPass], first: int, checkpoints: bool) -> None:
        """Run the plan's passes from ``first`` on, under the progress bars; a checkpoint after each
        pass when the run keeps them (a recipe that trains, with --out)."""
        console, info = state.console, current()
        with pipeline_progress(console, console.is_terminal and info.is_main) as progress:
            state.progress = progress
            task = progress.add_task("passes", total=len(plan), completed=first, loss="", metric="")
            for i, (entry, pass_spec, targets) in enumerate(plan):
                if i < first:
                    continue
                state.pass_index = i
                progress.update(task, description=f"[{i + 1}/{len(plan)}] {entry.name} on {len(targets)} layer(s)")
                self._run_pass(state, i, entry, pass_spec, targets)
                if not console.is_terminal and info.is_main:
                    log = state.pass_log[-1]
                    # a training pass that sets no mask changed every weight, not "0 layers"
                    what = ("trained, masks held" if pass_spec.trains and not log["layers"]
                            else f"{len(log['layers'])} layer(s)")
                    console.print(f"pass {log['pass']}: {what} in {log['seconds']}s")
                if checkpoints:
                    state.save_checkpoint()
                progress.advance(task)
        state.progress = NoProgress()

    @staticmethod
    def _run_pass(state: CompressionState, i: int, entry: PassEntry, pass_spec: PassSpec,
                  targets: list[Target]) -> None:
        """One pass: its errors name ``passes[i] (name)``; its result and masks are checked, then merged."""
        where = f"passes[{i}] ({entry.name})"
        t0 = time.perf_counter()
        before = _masks_now(state, targets)
        try:
            result = pass_spec.fn(state, entry.config, targets)
        except CompressorError as exc:  # the user's one line says which step of the recipe failed
            if not str(exc).startswith("passes["):
                exc.args = (f"{where}: {exc}",)
            raise
        except Exception as exc:  # a bug: the traceback stays, with the step that raised it
            if hasattr(exc, "add_note"):
                exc.add_note(f"raised in {where}")
            raise
        _check_result(result, targets, where)
        _check_masks(state, targets, before, pass_spec.regrows, where)
        _merge(state, entry.name, result, time.perf_counter() - t0)

    @staticmethod
    def _export_onnx(state: CompressionState, directory: Path) -> OnnxExport:
        """The recipe's ONNX export of the compressed model into ``directory``, each graph checked in
        ONNX Runtime: its errors as report metrics, and why a recurrent layer got no step graph."""
        ex, model, spec = state.recipe.export, state.model, state.spec
        results = export_model(model, input_specs(spec.example_inputs), directory, step=ex.step,
                               tolerance=ex.tolerance, dynamic=token_axes(spec.source))
        exported = OnnxExport(directory)
        for r in results.values():  # one metric per graph, in the usual {after: value} form
            exported.metrics[onnx_metric(r["file"])] = {"after": r["max_rel_error"]}
            state.console.print(f"onnx {r['file']}: max abs error {r['max_abs_error']:.3g}, "
                                f"max rel error {r['max_rel_error']:.3g} (ONNX Runtime vs torch)")
        for path, choice in results["model"].get("recurrent", {}).items():
            note = recurrent_graph_note(choice)
            state.console.print(f"onnx model.onnx: {path} {note}", markup=False)
            for name, t in state.targets.items():
                if t.module_path == path:
                    exported.notes.setdefault(name, []).append(f"model.onnx {note}")
        for name, entry in results.items():
            if note := step_graph_note(entry):
                state.console.print(f"onnx {name}: {note}", markup=False)
        if ex.step:
            for name, t in state.targets.items():
                module = model.get_submodule(t.module_path)
                if t.kind in ("lstm", "gru", "rnn") and getattr(module, "bidirectional", False):
                    exported.notes[name] = ["no step graph: a bidirectional layer has no streaming step (its backward "
                                            "direction needs the whole sequence)"]
        return exported


@dataclass
class OnnxExport:
    """What the recipe's ONNX export made: the folder holding its graphs (None: nothing exported),
    the report metrics of their errors, and notes on layers by name."""

    directory: Path | None = None
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)


def _reference_outputs(spec: ModelSpec) -> list[torch.Tensor] | None:
    """The dense model's floating outputs on the example inputs (for ``output_rel_error``); a clear
    error when the inputs do not fit the model."""
    if spec.example_inputs is None:
        return None
    with torch.no_grad():
        try:
            outputs = spec.model(*spec.example_inputs)
        except Exception as exc:
            shapes = ", ".join(f"{list(t.shape)}:{str(t.dtype).replace('torch.', '')}" for t in spec.example_inputs)
            raise CompressorError(
                f"the example inputs do not fit the model ({shapes}): {first_line(exc)}"
            ) from None
    return [o.clone() for o in flatten_outputs(outputs) if o.is_floating_point()]


def _finish_masks(state: CompressionState) -> dict[str, torch.Tensor]:
    """Bake the masks into the weights (zeros where pruned); returns every mask the artifact saves,
    those kernel swaps baked in earlier included."""
    return {**state.baked_masks, **masklib.finalize(state.model)}


def _measure(spec: ModelSpec, evaluate, eval_tokens: int | None, console, when: str,
             metrics: dict[str, dict[str, float]]) -> None:
    """The held-out metric (``evaluate``, :func:`held_out_metric`) of the model as it is now, recorded as
    ``metrics[name][when]``."""
    if evaluate is None:
        return
    with console.status("evaluating the original model" if when == "before" else "evaluating the compressed model"):
        for k, v in _evaluate(evaluate, spec.model, eval_tokens).items():
            metrics.setdefault(k, {})[when] = v


def _check_result(result: object, targets: list[Target], where: str) -> None:
    """A pass returns a PassResult whose layers are LayerUpdates of the targets it was given; anything
    else is a bug of the pass, reported as one (before it reaches a record or the report)."""
    if not isinstance(result, PassResult):
        raise RuntimeError(f"{where} returned {type(result).__name__}, not a PassResult (a bug in the pass)")
    given = {t.name for t in targets}
    for name, update in result.layers.items():
        if name not in given:
            raise RuntimeError(f"{where} reported layer {name!r}, which is not one of its targets (a bug in the pass)")
        if not isinstance(update, LayerUpdate):
            raise RuntimeError(f"{where} reported a {type(update).__name__} for layer {name}, not a LayerUpdate "
                               "(a bug in the pass)")
    for name in result.skipped:
        if name not in given:
            raise RuntimeError(f"{where} skipped layer {name!r}, which is not one of its targets (a bug in the pass)")


def _merge(state: CompressionState, name: str, result: PassResult, seconds: float) -> None:
    """Merge a checked pass result into the layer records and the pass log."""
    for target, update in result.layers.items():
        state.layers[target].apply(update, name)
    for target, reason in result.skipped.items():
        state.layers[target].notes.append(f"{name} skipped: {reason}")
    state.pass_log.append({
        "pass": name, "layers": sorted(result.layers), "skipped": result.skipped,
        "notes": result.notes, "metrics": result.metrics, "seconds": round(seconds, 3),
    })

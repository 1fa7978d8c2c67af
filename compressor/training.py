"""The fine-tuning loop shared by every training pass (gradual pruning, group lasso, gates, ...),
and the optimisation step under it that every training loop of the toolkit runs
(:func:`optimisation_steps`: the passes' :func:`fine_tune` and the built-in models' own training).

A training pass builds :class:`TrainHooks` (what happens before and after each optimizer step,
and any extra loss) and calls :func:`fine_tune`. The loop owns the rest: optimizer and
learning-rate schedule from the recipe, gradient clipping, evaluation every N steps, a
progress bar with loss and perplexity (on ``state.progress``, :class:`compressor.progress.Progress`:
the pipeline's rich bars, or nothing outside the pipeline), periodic checkpoints in the run's work directory,
``--resume`` from the last checkpoint, and DistributedDataParallel under torchrun.

Resume is exact by construction: batches are a pure function of the step, and a checkpoint
holds the weights, masks, optimizer, schedule, the hooks' own state and the RNG state.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn as nn

from .config import check_range
from .errors import RecipeError
from .tasks import BatchStream, TaskConfig

if TYPE_CHECKING:
    from .pipeline import CompressionState

__all__ = ["TrainConfig", "TrainHooks", "fine_tune", "optimisation_steps"]


@dataclass(frozen=True)
class TrainConfig:
    """Fine-tuning settings shared by every training pass (the ``train:`` mapping of a pass)."""

    steps: int = 300
    lr: float = 1e-3
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    weight_decay: float = 0.0
    momentum: float = 0.9
    schedule: Literal["constant", "cosine", "linear"] = "cosine"
    warmup: int = 0
    clip: float = 1.0
    eval_every: int = 100
    checkpoint_every: int = 50
    task: TaskConfig = field(default_factory=TaskConfig)

    def validate(self, path: str) -> None:
        if self.steps < 1:
            raise RecipeError(f"{path}.steps", f"{self.steps} is invalid; must be >= 1")
        check_range(f"{path}.lr", self.lr, 0.0, 10.0, low_open=True)
        for key in ("weight_decay", "clip"):
            if getattr(self, key) < 0:
                raise RecipeError(f"{path}.{key}", f"{getattr(self, key)} is invalid; must be >= 0")
        for key in ("warmup", "eval_every", "checkpoint_every"):
            if getattr(self, key) < 0:
                raise RecipeError(f"{path}.{key}", f"{getattr(self, key)} is invalid; must be >= 0 (0 disables)")
        if self.warmup >= self.steps:
            raise RecipeError(f"{path}.warmup", f"{self.warmup} must be below steps ({self.steps})")


class TrainHooks:
    """What a training pass adds to the loop. Override what you need."""

    def before_step(self, step: int) -> None:
        """Called before the forward pass of ``step`` (e.g. update masks on a schedule)."""

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        """A regulariser added to the task loss (e.g. group lasso with a smoothed norm)."""
        return None

    def after_step(self, step: int, lr: float) -> None:
        """Called after the optimizer step (e.g. a proximal update)."""

    def state_dict(self) -> dict:
        """Everything needed to resume: plain data and tensors only."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    """Trainable parameters in an order that does not depend on which weights are parametrized
    yet (a resumed run has its masks installed before the optimizer is built)."""
    named = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            named[name.replace("parametrizations.", "").replace(".original", "")] = p
    return [named[k] for k in sorted(named)]


def _optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _lr_factor(cfg: TrainConfig):
    def factor(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        p = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        if cfg.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, p)))
        if cfg.schedule == "linear":
            return max(0.0, 1 - p)
        return 1.0

    return factor


def optimisation_steps(params: list[nn.Parameter], optimizer: torch.optim.Optimizer, scheduler, steps: Iterable[int],
                       loss_at: Callable[[int], torch.Tensor], clip: float) -> Iterator[tuple[int, float]]:
    """Run one optimisation step per ``step`` of ``steps`` and yield ``(step, lr)`` after each, ``lr``
    the rate the step used: ``loss_at(step)`` (the loss to minimise), zeroed gradients, backward,
    gradient norm clipped to ``clip`` over ``params`` (0: no clipping), optimizer step, then
    ``scheduler.step()``. The one step of every training loop here: the passes' fine-tuning and
    the built-in models' training from scratch."""
    for step in steps:
        loss = loss_at(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        yield step, lr


def fine_tune(state: CompressionState, cfg: TrainConfig, hooks: TrainHooks, label: str) -> dict:
    """Train ``state.model`` for ``cfg.steps`` steps on ``cfg.task``; returns loss/eval history.

    Resumes from ``state.resume`` when it holds a checkpoint taken inside this pass.
    """
    from .distributed import current

    info = current()
    task = state.task(cfg.task)
    model = state.model
    params = _trainable(model)
    opt = _optimizer(params, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_factor(cfg))
    start = 0
    history: dict = {"loss": [], "eval": []}
    resume = state.take_resume_point()
    if resume is not None:
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
        hooks.load_state_dict(resume["hooks"])
        history = resume["history"]
        start = resume["step"]
        torch.set_rng_state(resume["rng"])
    runner = model
    if info.enabled:
        runner = nn.parallel.DistributedDataParallel(model, broadcast_buffers=False)
    model.train()
    progress = state.progress
    task_id = progress.add_task(f"  {label}", total=cfg.steps, completed=start, loss="", metric="")
    task_loss: list[torch.Tensor] = []  # the step's task loss without the hooks' extra term, for the history

    def loss_at(step: int) -> torch.Tensor:
        hooks.before_step(step)
        batch = task.batch(BatchStream.TRAINING + step, info.rank, info.world)
        loss = task.loss(runner, batch)
        task_loss[:] = [loss]
        extra = hooks.extra_loss(model)
        return loss + extra if extra is not None else loss

    for step, lr in optimisation_steps(params, opt, sched, range(start, cfg.steps), loss_at, cfg.clip):
        hooks.after_step(step, lr)
        loss_value = task_loss[0].item()
        history["loss"].append(round(loss_value, 5))
        progress.update(task_id, advance=1, loss=f"loss {loss_value:.3f}")
        done = step + 1
        if cfg.eval_every and (done % cfg.eval_every == 0 or done == cfg.steps):
            metrics = task.evaluate(model)
            history["eval"].append({"step": done, **metrics})
            text = "  ".join(f"{k} {v:.4g}" for k, v in metrics.items())
            progress.update(task_id, metric=text)
            if not state.console.is_terminal and info.is_main:
                state.console.print(f"{label} step {done}/{cfg.steps}: loss {loss_value:.4f}  {text}")
        if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.steps:
            state.save_checkpoint(step=done, optimizer=opt.state_dict(), scheduler=sched.state_dict(),
                                  hooks=hooks.state_dict(), history=history)
    progress.remove_task(task_id)
    model.eval()
    return history

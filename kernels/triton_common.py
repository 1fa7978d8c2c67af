"""Backend selection for the sparse ops (:class:`~compressor.kernels.backends.Backend`), and lazily
built Triton kernels.

Rules (one place, used by the modules, the ops and the ``swap_kernels`` pass):

* ``torch`` -- the pure-torch reference ops (CPU and GPU).
* ``triton`` -- the Triton kernels. On a CUDA tensor this needs ``triton`` importable; on a CPU
  tensor it runs only under the Triton interpreter (``TRITON_INTERPRET=1`` in the environment),
  otherwise a :class:`TritonUnavailableError` says what is missing.
* ``auto`` -- ``triton`` when the tensor is on CUDA, triton imports and the op supports the shape
  (block sizes powers of two >= 16); ``torch`` otherwise. While exporting
  (``torch.compiler.is_exporting()``) ``auto`` stays on torch so ONNX export keeps standard ops.
* ``native`` -- never Triton: the ops run on torch (the compiled CPU kernels are chosen by the
  modules that have one, before they ask here).

Interpreter mode is read from the environment *when a kernel is launched*, not when triton is
imported: :class:`LazyKernel` builds a compiled ``triton.jit`` kernel or an interpreted one
(``triton.runtime.interpreter.InterpretedFunction``, what ``triton.jit`` itself builds when
``TRITON_INTERPRET=1``) on first use in each mode. So tests can switch the interpreter on for one
test (``monkeypatch.setenv``) without changing anything for the rest of the process.

Known interpreter issue (triton 3.9): ``tl.dot`` on bf16 operands returns garbage in the
interpreter (numpy has no bf16), so kernels upcast dot operands to fp32 when interpreting
(``interpret_upcast``); compiled GPU kernels use the native bf16 dot.
"""

from __future__ import annotations

import os

import torch

from .backends import BACKENDS, Backend, check_backend

__all__ = [
    "BACKENDS",
    "TritonUnavailableError",
    "triton_importable",
    "interpreter_enabled",
    "triton_unavailable_reason",
    "resolve_backend",
    "block_supported",
    "LazyKernel",
    "interpret_upcast",
    "dot_precision",
]

class TritonUnavailableError(RuntimeError):
    """``backend='triton'`` was asked for where no Triton kernel can run."""


def triton_importable() -> bool:
    """True if ``import triton`` works (cached after the first call)."""
    global _IMPORTABLE
    if _IMPORTABLE is None:
        try:
            import triton  # noqa: F401
            import triton.language  # noqa: F401

            _IMPORTABLE = True
        except ImportError:
            _IMPORTABLE = False
    return _IMPORTABLE


_IMPORTABLE: bool | None = None


def interpreter_enabled() -> bool:
    """True if ``TRITON_INTERPRET`` is set to a true value (``1``, ``true``, ``on``, ``yes``)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def triton_unavailable_reason(device: torch.device | str | None = None) -> str | None:
    """Why Triton kernels cannot run on ``device`` (None: they can).

    ``device=None`` asks about the machine: CUDA present, or the interpreter enabled.
    """
    if not triton_importable():
        return "the 'triton' package is not installed (pip install triton, or the 'gpu' extra)"
    if device is None:
        if torch.cuda.is_available() or interpreter_enabled():
            return None
        return "no CUDA device here and TRITON_INTERPRET=1 is not set (the Triton interpreter runs on CPU)"
    device = torch.device(device)
    if device.type == "cuda" or interpreter_enabled():
        return None
    return (f"tensors are on {device.type}, not cuda; Triton kernels run on CUDA, or on CPU only under the "
            f"Triton interpreter (set TRITON_INTERPRET=1)")


def block_supported(*dims: int) -> bool:
    """Triton block dims must be powers of two and >= 16 (``tl.arange`` and ``tl.dot`` limits)."""
    return all(d >= 16 and d & (d - 1) == 0 for d in dims)


def resolve_backend(backend: str, x: torch.Tensor, *, supported: bool = True, what: str = "this op") -> str:
    """``'torch'`` or ``'triton'`` for ``backend`` (a :class:`Backend` or its name) on input ``x``
    (see the module docstring).

    ``supported``: whether the op's Triton kernel handles this shape; ``auto`` falls back to torch
    when it does not, ``triton`` raises ``ValueError``.
    """
    backend = check_backend(backend)
    if backend in (Backend.TORCH, Backend.NATIVE):
        return "torch"
    if backend == Backend.AUTO:
        if x.is_cuda and supported and not torch.compiler.is_exporting() and triton_importable():
            return "triton"
        return "torch"
    reason = triton_unavailable_reason(x.device)
    if reason is not None:
        raise TritonUnavailableError(f"backend 'triton' cannot run {what}: {reason}")
    if not supported:
        raise ValueError(f"backend 'triton' does not support {what} with these sizes: block dims must be powers "
                         f"of two >= 16; use backend 'auto' or 'torch'")
    return "triton"


def interpret_upcast(dtype: torch.dtype) -> bool:
    """Whether kernels upcast ``tl.dot`` operands to fp32: 16-bit dtypes under the interpreter.

    bf16 dots are wrong there (see above); fp16 is upcast too so that numpy accumulates in fp32
    like the GPU's tensor cores do.
    """
    return interpreter_enabled() and dtype in (torch.bfloat16, torch.float16)


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot`` input precision for fp32 operands: tf32 only where torch's own matmul allows it."""
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


class LazyKernel:
    """A Triton kernel built from a plain function on first launch, compiled or interpreted.

    ``kernel[grid](*args, **meta)`` launches like a ``triton.jit`` function. The mode follows
    ``TRITON_INTERPRET`` at launch time; one kernel object per mode is cached.
    """

    def __init__(self, fn):
        self.fn = fn
        self._built: dict[bool, object] = {}

    def build(self):
        interp = interpreter_enabled()
        kernel = self._built.get(interp)
        if kernel is None:
            if interp:
                from triton.runtime.interpreter import InterpretedFunction

                kernel = InterpretedFunction(self.fn)
            else:
                from triton.runtime.jit import JITFunction

                kernel = JITFunction(self.fn)
            self._built[interp] = kernel
        return kernel

    def __getitem__(self, grid):
        return self.build()[grid]

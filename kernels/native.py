"""A small C kernel for the gated block product on CPU, compiled on first use and called through ctypes.

Why: at batch 1 the eager gated path (:func:`~compressor.kernels.gated_ops.gated_block_linear`,
``path="ebag"``) is a dozen small torch ops per matrix plus an ``embedding_bag`` over 256-byte
column segments; at the built-in LM's size (1024 x 256 matrices) that is about twice the time of
the dense GEMV it is meant to beat. This kernel walks the kept blocks once, each block a contiguous
``bw x bh`` tile streamed with FMA, and accumulates straight into the output rows (measured with 4
rotated weight copies, 1 thread, keep 0.5: 1024 x 256 in 16 us against 30 us dense and 62 us for
``ebag``; 4096 x 1024 in ~380 us against ~1060 us dense and ~690 us ``ebag``).

How: the C source below is compiled with the system C compiler (``$CC``, else ``cc``) into
``$COMPRESSOR_CACHE/native/`` (default ``~/.cache/compressor``), keyed by a hash of the source,
the flags and the CPU, written atomically so that concurrent processes (torchrun ranks) agree.
``-march=native`` is tried first, then portable flags. No torch headers are needed, so a build
takes well under a second. Without a compiler, or with ``COMPRESSOR_NATIVE=0``, :func:`library`
returns None and callers keep the pure-torch path; :func:`unavailable_reason` says why.

The kernel is inference-only (no autograd): :func:`native_eligible` checks that nothing needs a
gradient. Work is split over block rows with OpenMP when the build has it, using torch's thread
count.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

__all__ = ["library", "unavailable_reason", "native_eligible", "gated_block_matvec"]

_SOURCE = r"""
#include <stdint.h>
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* y[b, j*bh + r] += sum over kept blocks t of block row j:
 *   g[b, t] * sum_c x[b, i*bw + c] * blocks[k, c, r]      with k = idx[b, t], j = k / Ci, i = k % Ci.
 * blocks (K, bw, bh) contiguous (each block stored transposed); y must be zeroed by the caller.
 * Threads split the block rows, so no two threads write the same output. */
#define GATED_KERNEL(NAME, T)                                                                      \
void NAME(const T* x, int64_t x_stride, const T* blocks, const int64_t* idx, const T* g,          \
          int64_t B, int64_t n, int64_t Ro, int64_t Ci, int64_t bw, int64_t bh,                    \
          T* y, int64_t y_stride, int64_t threads) {                                               \
  for (int64_t b = 0; b < B; ++b) {                                                                \
    const T* xb = x + b * x_stride; T* yb = y + b * y_stride;                                      \
    const int64_t* ib = idx + b * n; const T* gb = g + b * n;                                      \
    int64_t nt = threads < Ro ? threads : Ro;                                                      \
    if (nt < 1) nt = 1;                                                                            \
    _Pragma("omp parallel for num_threads(nt) schedule(static) if(nt > 1)")                        \
    for (int64_t part = 0; part < nt; ++part) {                                                    \
      for (int64_t t = 0; t < n; ++t) {                                                            \
        const int64_t k = ib[t], j = k / Ci;                                                       \
        if (j % nt != part) continue;                                                              \
        const T* w = blocks + k * bw * bh; const T* xs = xb + (k % Ci) * bw; T* ys = yb + j * bh;  \
        const T gv = gb[t];                                                                        \
        for (int64_t c = 0; c < bw; ++c) {                                                         \
          const T s = gv * xs[c]; const T* wr = w + c * bh;                                        \
          for (int64_t r = 0; r < bh; ++r) ys[r] += s * wr[r];                                     \
        }                                                                                          \
      }                                                                                            \
    }                                                                                              \
  }                                                                                                \
}

GATED_KERNEL(gated_block_matvec_f32, float)
GATED_KERNEL(gated_block_matvec_f64, double)
"""

_FLAG_SETS = (
    ["-O3", "-march=native", "-fopenmp"],
    ["-O3", "-march=native"],
    ["-O3", "-fopenmp"],
    ["-O3"],
)
_lock = threading.Lock()
_state: dict[str, object] = {}


def _cpu_key() -> str:
    """What ``-march=native`` depends on: the CPU's model and feature flags where Linux says them."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        lines = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags", "Features"))]
        return "\n".join(sorted(set(lines)))
    except OSError:
        return platform.processor() or platform.machine()


def _build() -> tuple[ctypes.CDLL | None, str | None]:
    if os.environ.get("COMPRESSOR_NATIVE", "1") == "0":
        return None, "disabled by COMPRESSOR_NATIVE=0"
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        return None, "no C compiler found (set CC, or install gcc)"
    from compressor.corpus import cache_dir

    folder = cache_dir() / "native"
    errors = []
    for flags in _FLAG_SETS:
        key = hashlib.sha256("\0".join([_SOURCE, cc, *flags, _cpu_key(), platform.platform()]).encode()).hexdigest()[:16]
        lib_path = folder / f"gated_block_{key}.so"
        if not lib_path.exists():
            try:
                folder.mkdir(parents=True, exist_ok=True)
                with tempfile.TemporaryDirectory(dir=folder) as tmp:
                    src = Path(tmp) / "gated_block.c"
                    src.write_text(_SOURCE)
                    out = Path(tmp) / "lib.so"
                    proc = subprocess.run([cc, *flags, "-shared", "-fPIC", str(src), "-o", str(out)],
                                          capture_output=True, text=True, timeout=120)
                    if proc.returncode != 0:
                        errors.append(f"{' '.join(flags)}: {proc.stderr.strip().splitlines()[-1:]}")
                        continue
                    os.replace(out, lib_path)  # atomic: a concurrent process sees all or nothing
            except (OSError, subprocess.SubprocessError) as exc:
                errors.append(f"{' '.join(flags)}: {exc}")
                continue
        try:
            lib = ctypes.CDLL(str(lib_path))
        except OSError as exc:
            errors.append(f"{lib_path}: {exc}")
            continue
        P, I = ctypes.c_void_p, ctypes.c_int64
        for name in ("gated_block_matvec_f32", "gated_block_matvec_f64"):
            fn = getattr(lib, name)
            fn.argtypes = [P, I, P, P, P, I, I, I, I, I, I, P, I, I]
            fn.restype = None
        return lib, None
    return None, "could not build the native kernel: " + "; ".join(errors)


def library() -> ctypes.CDLL | None:
    """The compiled kernel library (built on first call), or None when it cannot be built."""
    if "lib" not in _state:
        with _lock:
            if "lib" not in _state:
                _state["lib"], _state["why"] = _build()
    return _state["lib"]  # type: ignore[return-value]


def unavailable_reason() -> str | None:
    """Why :func:`library` is None (None when the kernel is available)."""
    library()
    return _state["why"]  # type: ignore[return-value]


def native_eligible(x: torch.Tensor, *tensors: torch.Tensor) -> bool:
    """Whether the native kernel can run these inputs: CPU, fp32/fp64, no autograd needed, built."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in (x, *tensors)):
        return False
    if any(t.dtype != x.dtype or t.device.type != "cpu" for t in tensors):
        return False
    return library() is not None


def gated_block_matvec(x: torch.Tensor, blocks_t: torch.Tensor, idx: torch.Tensor, g: torch.Tensor,
                       grid: tuple[int, int]) -> torch.Tensor:
    """``(B, Ro*bh)`` block-row outputs of the kept blocks: the native twin of the ``ebag`` path.

    ``x (B, Ci*bw)`` (already padded), ``blocks_t (K, bw, bh)``, ``idx (B, n)`` global block
    indices and ``g (B, n)`` gate values from :func:`~compressor.kernels.gated_ops.select_blocks`
    (either mode: row mode's indices are global too). Raises RuntimeError when not built.
    """
    if x.dtype not in (torch.float32, torch.float64) or any(t.dtype != x.dtype for t in (blocks_t, g)):
        raise TypeError(f"the native gated kernel takes fp32 or fp64 (all alike), got x {x.dtype}, "
                        f"blocks {blocks_t.dtype}, g {g.dtype}")
    if torch.is_grad_enabled() and any(t.requires_grad for t in (x, blocks_t, g)):
        raise RuntimeError("the native gated kernel is inference-only: run it under torch.no_grad() "
                           "or use path 'ebag' / 'bmm' for training")
    lib = library()
    if lib is None:
        raise RuntimeError(f"native gated kernel unavailable: {unavailable_reason()}")
    Ro, Ci = grid
    K, bw, bh = blocks_t.shape
    B, n = idx.shape
    if x.shape != (B, Ci * bw) or K != Ro * Ci or g.shape != (B, n):
        raise ValueError(f"shapes do not fit: x {tuple(x.shape)}, blocks {tuple(blocks_t.shape)}, grid {grid}, "
                         f"idx {tuple(idx.shape)}, g {tuple(g.shape)}")
    x, blocks_t, g = x.contiguous(), blocks_t.contiguous(), g.contiguous()  # no copies when already so
    idx = idx.contiguous() if idx.dtype == torch.int64 else idx.to(torch.int64).contiguous()
    y = torch.zeros(B, Ro * bh, dtype=x.dtype)
    fn = lib.gated_block_matvec_f32 if x.dtype == torch.float32 else lib.gated_block_matvec_f64
    fn(x.data_ptr(), x.stride(0), blocks_t.data_ptr(), idx.data_ptr(), g.data_ptr(), B, n, Ro, Ci, bw, bh,
       y.data_ptr(), y.stride(0), torch.get_num_threads())
    return y

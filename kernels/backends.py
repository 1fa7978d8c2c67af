"""The backends a sparse kernel module can be asked to run: one name for every path.

Every kernel module (:class:`~compressor.kernels.BlockSparseLinear`, ``NMLinear``,
``GatedBlockLinear``, ``SparseLSTM``/``SparseGRU`` through their projections) has a ``backend``
attribute holding one of these; the ``swap_kernels`` pass sets it and artifacts record it (as the
plain string, so :class:`Backend` values compare and hash equal to the strings written before it
existed). The dispatch itself stays where it is: :func:`~compressor.kernels.triton_common.resolve_backend`
for the Triton kernels, the modules' ``forward`` for the compiled CPU kernels (:mod:`.native`).
"""

from __future__ import annotations

from enum import Enum

__all__ = ["Backend", "BACKENDS", "check_backend"]


class Backend(str, Enum):
    """Which kernels a sparse module runs.

    * ``auto`` -- the fastest path the input allows: the Triton kernels (or, for ``NMLinear``, torch's
      2:4 semi-structured tensors) on CUDA where the shape suits them; on CPU the compiled C kernels
      (:mod:`compressor.kernels.native`) where the module has one and the call can take it (inference
      in fp32/fp64, no hooks): ``GatedBlockLinear``'s fused forward, ``SparseLSTM``/``SparseGRU``'s
      time loop and input projections; the pure-torch ops otherwise.
    * ``torch`` -- the pure-torch ops. One exception kept for the artifacts that record it:
      ``SparseLSTM``/``SparseGRU`` still take the compiled time loop on CPU (``swap_kernels`` records
      ``torch`` on machines without CUDA); ``COMPRESSOR_NATIVE=0`` turns that off.
    * ``triton`` -- the Triton kernels; a clear error where they cannot run (no CUDA and no
      ``TRITON_INTERPRET=1``, or block sizes they do not support).
    * ``native`` -- the compiled CPU kernels where the module has one (as under ``auto`` on CPU),
      the pure-torch ops everywhere else, CUDA included; never Triton. Modules without a compiled
      kernel (``BlockSparseLinear`` on its own, ``NMLinear``) run their torch ops. The
      ``swap_kernels`` pass refuses it up front where the library cannot be built (no C compiler,
      ``COMPRESSOR_NATIVE=0``); a module asked for it falls back to torch ops, so an artifact that
      records it loads and runs anywhere.
    """

    AUTO = "auto"
    TORCH = "torch"
    TRITON = "triton"
    NATIVE = "native"

    # str() and f-strings give the value ("auto"), as the plain strings did
    __str__ = str.__str__
    __format__ = str.__format__


#: every backend name, in the order above
BACKENDS = tuple(b.value for b in Backend)


def check_backend(backend: object) -> Backend:
    """``backend`` as a :class:`Backend`; ValueError naming the allowed values otherwise."""
    try:
        return Backend(backend)
    except ValueError:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}") from None

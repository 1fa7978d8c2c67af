"""Compile a small C source on first use and load it with ctypes: the one build rule that the native
kernels (:mod:`compressor.kernels.native`) and the native mask solver
(:mod:`compressor.solvers.cyclecancel`) share.

This module is a leaf that imports nothing of the project, so the leaf packages ``kernels`` and
``solvers`` may use it without depending on the rest of compressor (``tests/test_architecture.py``).

How: the source is compiled with the system C compiler (``$CC``, else ``cc``/``gcc``/``clang``) into
``$COMPRESSOR_CACHE/native/`` (default ``~/.cache/compressor``; :func:`cache_dir`), keyed by a hash
of the source, the compiler, the flags and the CPU (``-march=native`` code is only reused on the
CPU it was built for), and written atomically (build in a temporary folder, then ``os.replace``) so
that concurrent processes such as torchrun ranks agree. The flag sets are tried in order (the first
ones with ``-march=native`` and OpenMP, the last portable). No Python or torch headers are needed,
so a build takes a second or two (2.7 s for the solver on a loaded 2-core machine), once per
machine and source. Without a compiler, or with ``COMPRESSOR_NATIVE=0``, :meth:`NativeLibrary.get`
returns None and :meth:`NativeLibrary.unavailable_reason` says why; callers keep their pure-Python
path.
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
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["cache_dir", "NativeLibrary", "DEFAULT_FLAG_SETS"]

#: Flag sets tried in order: the fastest first, the portable last.
DEFAULT_FLAG_SETS: tuple[tuple[str, ...], ...] = (
    ("-O3", "-march=native", "-fopenmp"),
    ("-O3", "-march=native"),
    ("-O3", "-fopenmp"),
    ("-O3",),
)


def cache_dir() -> Path:
    """The toolkit's cache folder: ``$COMPRESSOR_CACHE``, else ``~/.cache/compressor`` (compiled
    libraries under ``native/``, downloaded corpora and models beside them)."""
    return Path(os.environ.get("COMPRESSOR_CACHE", Path.home() / ".cache" / "compressor"))


def _cpu_key() -> str:
    """What ``-march=native`` depends on: the CPU's model and feature flags where Linux says them."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        lines = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags", "Features"))]
        return "\n".join(sorted(set(lines)))
    except OSError:
        return platform.processor() or platform.machine()


class NativeLibrary:
    """A C library built from ``source`` on the first :meth:`get` (thread-safe, once per process).

    ``name``: the stem of the cached ``.so`` files. ``declare``: called with the loaded
    :class:`ctypes.CDLL` to set the functions' ``argtypes``/``restype`` (an ``AttributeError`` there,
    a missing symbol, counts as a failed build of that flag set).
    """

    def __init__(self, name: str, source: str, declare: Callable[[ctypes.CDLL], None],
                 flag_sets: Sequence[Sequence[str]] = DEFAULT_FLAG_SETS) -> None:
        self.name, self.source, self.declare, self.flag_sets = name, source, declare, tuple(map(tuple, flag_sets))
        self._lock = threading.Lock()
        #: set once :meth:`get` has run: hot paths read ``lib`` directly when ``tried`` is true
        self.tried = False
        self.lib: ctypes.CDLL | None = None
        self._why: str | None = None

    def get(self) -> ctypes.CDLL | None:
        """The loaded library (built on first call), or None when it cannot be built or is disabled."""
        if not self.tried:
            with self._lock:
                if not self.tried:
                    self.lib, self._why = self._build()
                    self.tried = True
        return self.lib

    def unavailable_reason(self) -> str | None:
        """Why :meth:`get` is None (None when the library is available)."""
        self.get()
        return self._why

    def fresh(self) -> NativeLibrary:
        """A copy of this library's definition that has not looked for the library yet."""
        return NativeLibrary(self.name, self.source, self.declare, self.flag_sets)

    def reset(self) -> None:
        """Forget the loaded library (the next :meth:`get` looks again; for tests that switch
        ``COMPRESSOR_NATIVE``)."""
        with self._lock:
            self.tried, self.lib, self._why = False, None, None

    def _build(self) -> tuple[ctypes.CDLL | None, str | None]:
        if os.environ.get("COMPRESSOR_NATIVE", "1") == "0":
            return None, "disabled by COMPRESSOR_NATIVE=0"
        cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
        if cc is None:
            return None, "no C compiler found (set CC, or install gcc)"
        folder = cache_dir() / "native"
        machine = [self.source, cc, _cpu_key(), platform.platform()]  # read once, not per flag set
        errors = []
        for flags in self.flag_sets:
            key = hashlib.sha256("\0".join([*machine, *flags]).encode()).hexdigest()[:16]
            lib_path = folder / f"{self.name}_{key}.so"
            if not lib_path.exists():
                try:
                    folder.mkdir(parents=True, exist_ok=True)
                    with tempfile.TemporaryDirectory(dir=folder) as tmp:
                        src = Path(tmp) / f"{self.name}.c"
                        src.write_text(self.source)
                        out = Path(tmp) / "lib.so"
                        proc = subprocess.run([cc, *flags, "-shared", "-fPIC", str(src), "-o", str(out), "-lm"],
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
                self.declare(lib)
            except (OSError, AttributeError) as exc:
                errors.append(f"{lib_path}: {exc}")
                continue
            return lib, None
        return None, f"could not build the native {self.name} library: " + "; ".join(errors)

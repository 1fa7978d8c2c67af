"""compressor.native_build: a C source compiled once into the cache, reused, and a clear None (with
the reason) where it cannot be built, leaving nothing half-written in the cache."""

from __future__ import annotations

import ctypes
import shutil

import pytest

from compressor.native_build import NativeLibrary

ADD = "int add_ints(int a, int b) { return a + b; }\n"
needs_cc = pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")),
                              reason="no C compiler")


def _declare(lib: ctypes.CDLL) -> None:
    lib.add_ints.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.add_ints.restype = ctypes.c_int


@needs_cc
def test_builds_once_into_the_cache_and_reuses_it(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESSOR_CACHE", str(tmp_path))
    first = NativeLibrary("adder", ADD, _declare, flag_sets=[("-O2",)])
    assert first.get().add_ints(2, 40) == 42 and first.unavailable_reason() is None
    built = sorted((tmp_path / "native").iterdir())
    assert [p.suffix for p in built] == [".so"] and built[0].name.startswith("adder_")
    stamp = built[0].stat().st_mtime_ns
    again = first.fresh()  # a new process would look again: the cached file is loaded, not rebuilt
    assert again.get().add_ints(-1, 1) == 0
    assert sorted((tmp_path / "native").iterdir()) == built and built[0].stat().st_mtime_ns == stamp
    other = NativeLibrary("adder", ADD.replace("a + b", "a - b"), _declare, flag_sets=[("-O2",)])
    assert other.get().add_ints(2, 40) == -38  # another source, another cache key
    assert len(list((tmp_path / "native").iterdir())) == 2


@needs_cc
def test_a_source_that_does_not_compile_gives_none_and_the_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESSOR_CACHE", str(tmp_path))
    broken = NativeLibrary("broken", "int add_ints(int a, int b) { return a + ; }\n", _declare,
                           flag_sets=[("-O2",), ("-O0",)])
    assert broken.get() is None
    why = broken.unavailable_reason()
    assert why.startswith("could not build the native broken library: -O2:") and "-O0:" in why
    assert list((tmp_path / "native").iterdir()) == []  # no half-written library, no temporary folder


@needs_cc
def test_a_missing_symbol_counts_as_a_failed_build(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESSOR_CACHE", str(tmp_path))
    lib = NativeLibrary("nosym", "int something_else(void) { return 1; }\n", _declare, flag_sets=[("-O2",)])
    assert lib.get() is None and "add_ints" in lib.unavailable_reason()


def test_disabled_and_compilerless_machines_get_none(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESSOR_CACHE", str(tmp_path))
    monkeypatch.setenv("COMPRESSOR_NATIVE", "0")
    lib = NativeLibrary("adder", ADD, _declare)
    assert lib.get() is None and lib.unavailable_reason() == "disabled by COMPRESSOR_NATIVE=0"
    monkeypatch.delenv("COMPRESSOR_NATIVE")
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    lib = NativeLibrary("adder", ADD, _declare)
    assert lib.get() is None and "no-such-compiler" in lib.unavailable_reason()
    assert not (tmp_path / "native").exists() or list((tmp_path / "native").iterdir()) == []

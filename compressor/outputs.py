"""Where the toolkit writes: checked before any work, claimed exclusively, written atomically.

One owner for every output the toolkit makes (artifact directories, single files such as
ONNX graphs, HTML reports, checkpoints and benchmark JSON):

- :func:`check_output` refuses, before a model is loaded, an ``--out`` that is or contains one
  of the run's inputs (recipe, checkpoint, model directory, corpus or task files, the working
  directory) or sits inside an input directory: ``--force`` replaces ``--out`` whole, and must
  never take an input with it.
- :func:`claim_output` creates the parent folders, proves they are writable and takes an
  exclusive lock (``.OUT.lock`` beside ``OUT``, holding the owner's pid) for the whole run, so a
  second run to the same ``--out`` fails at once instead of silently replacing the first one's
  artifact. A lock whose process is gone (a killed run) is taken over, and the temporary
  folders that run left behind are removed.
- :func:`atomic_directory` and :func:`atomic_file` write to a temporary sibling and rename it into
  place, so a failure (or SIGKILL) never leaves a half-written output under the real name;
  :func:`scratch_directory` is such a sibling for files made before the output is written (an
  ONNX export whose errors the report records), moved into it by rename.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import ArtifactError, CompressorError

__all__ = ["check_output", "claim_output", "atomic_directory", "scratch_directory", "atomic_file", "named_paths"]

#: out directories this process holds the lock of, with a count (claims nest: the CLI claims
#: before it loads the model, the pipeline again around its run)
_HELD: dict[Path, int] = {}


def named_paths(values: object) -> list[Path]:
    """Every string inside ``values`` (a recipe mapping, nested) that names an existing file or folder.

    A recipe names corpus files, task modules and checkpoints in several places; collecting
    every string that exists on disk covers them all, and any future key, with no list to keep."""
    found: list[Path] = []
    stack = [values]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend(value)
        elif isinstance(value, str) and value and len(value) < 4096 and "\0" not in value:
            for candidate in (value, value.rpartition(":")[0]):  # 'file.py:function' names file.py
                try:
                    if candidate and Path(candidate).exists():
                        found.append(Path(candidate))
                except OSError:  # a name too long for the file system is no input
                    pass
    return found


def check_output(out: str | Path, force: bool, inputs: Iterable[str | Path | None] = (), option: str = "--out") -> Path:
    """Refuse an output location that would lose data, before any work starts.

    ``inputs`` are the files and folders the run reads; the working directory is always one.
    ``option`` is how the messages name the output (the command-line option that set it).
    Returns ``out`` resolved."""
    target = Path(out).resolve()
    shown = str(out)
    if target.exists() and not target.is_dir():
        raise ArtifactError(f"output path {shown} exists and is not a directory")
    if target.exists() and not force:
        raise ArtifactError(f"output directory {shown} exists; choose another {option} or pass --force to replace it")
    cwd = Path.cwd().resolve()
    for raw in [cwd, *inputs]:
        if raw is None:
            continue
        path = Path(raw).resolve()
        what = "the working directory" if path == cwd else f"input {raw}"
        if path == target or target in path.parents:
            raise ArtifactError(f"{option} {shown} is or contains {what}, which --force would delete; "
                                "choose an output directory outside the run's inputs")
        if path != cwd and path.is_dir() and path in target.parents:
            raise ArtifactError(f"{option} {shown} lies inside {what}; write outputs outside the input directories")
    return target


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _lock_path(out: Path) -> Path:
    return out.parent / f".{out.name}.lock"


def _take_lock(lock: Path, shown: str) -> None:
    """Create ``lock`` exclusively with our pid; take over a lock whose process is gone."""
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                owner = int(lock.read_text().strip() or "0")
            except (OSError, ValueError):
                owner = 0
            if owner and _pid_alive(owner):
                raise ArtifactError(f"another run (pid {owner}) is writing {shown}; wait for it to finish or choose "
                                    f"another --out (a stale lock is {lock})") from None
            # the owner died (SIGKILL, power loss): move its lock aside atomically, then race for a new one
            stale = lock.with_name(f"{lock.name}.stale-{os.getpid()}")
            try:
                os.replace(lock, stale)
                stale.unlink(missing_ok=True)
            except FileNotFoundError:
                pass  # another process took it over first; try again
            continue
        except OSError as exc:
            raise ArtifactError(f"cannot write to {lock.parent}: {exc.strerror or exc}") from None
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{os.getpid()}\n")
        return
    raise ArtifactError(f"cannot lock {shown}: another run keeps taking {lock}")


def _remove_leftovers(out: Path) -> list[str]:
    """Temporary folders of killed runs to the same ``out`` (safe: we hold its lock)."""
    removed = []
    for pattern in (f".{out.name}.tmp-*", f".{out.name}.old-*"):
        for path in out.parent.glob(pattern):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
    return removed


@contextmanager
def claim_output(out: str | Path, force: bool = False, inputs: Iterable[str | Path | None] = (),
                 notes: list[str] | None = None, option: str = "--out") -> Iterator[Path]:
    """Check ``out`` (:func:`check_output`), create its parent folders and hold its lock for the block.

    Claims nest within one process. Folders this call created are removed again if the block
    fails and left them empty. Removed leftovers of killed runs are appended to ``notes``."""
    target = check_output(out, force, inputs, option)
    if target in _HELD:
        _HELD[target] += 1
        try:
            yield target
        finally:
            _HELD[target] -= 1
        return
    made = [p for p in (target.parent, *target.parent.parents) if not p.exists()]
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ArtifactError(f"cannot create the folder of {option} {out}: {exc.strerror or exc}") from None
    ok = False
    try:
        _take_lock(_lock_path(target), str(out))
        _HELD[target] = 1
        try:
            removed = _remove_leftovers(target)
            if removed and notes is not None:
                notes.append(f"removed {len(removed)} temporary folder(s) an interrupted run left beside {out}")
            yield target
            ok = True
        finally:
            del _HELD[target]
            _lock_path(target).unlink(missing_ok=True)
    finally:
        if not ok:
            for folder in made:  # innermost first: a failure leaves no empty runs/ behind
                try:
                    folder.rmdir()
                except OSError:
                    break


@contextmanager
def atomic_directory(out: str | Path, force: bool = False, inputs: Iterable[str | Path | None] = (),
                     option: str = "--out") -> Iterator[Path]:
    """Yield a temporary directory that becomes ``out`` only if the block succeeds (under the claim)."""
    out = Path(out)
    with claim_output(out, force, inputs, option=option) as target:
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
        try:
            yield tmp
            _default_permissions(tmp)
            if target.exists():
                if not force:  # appeared while we worked, though we hold the lock: never replace it
                    raise ArtifactError(f"output directory {out} appeared during the run; nothing was replaced")
                old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
                os.replace(target, old / "x")
                os.replace(tmp, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


@contextmanager
def scratch_directory(out: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``out`` (claimed by the caller), removed when the block ends.

    On the same file system as ``out``, so its files move into the output by rename; named like
    :func:`atomic_directory`'s, so a killed run's is removed with the other leftovers."""
    out = Path(out)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_file(path: str | Path, mode: str = "w", force: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block succeeds.

    The block writes the temporary path itself (by name). Without ``force`` an existing file is
    refused. The file gets the usual umask mode (mkstemp makes owner-only files)."""
    path = Path(path)
    if path.is_dir():
        raise CompressorError(f"cannot write {path}: it is a directory")
    if path.exists() and not force:
        raise CompressorError(f"{path} exists; pass --force to replace it")
    if not path.parent.is_dir():
        raise CompressorError(f"cannot write {path}: folder {path.parent} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise CompressorError(f"cannot write {path}: {exc.strerror or exc}") from None
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _default_permissions(directory: Path) -> None:
    """mkdtemp and some writers create owner-only files; give the artifact the usual umask modes."""
    umask = _umask()
    directory.chmod(0o777 & ~umask)
    for path in directory.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)

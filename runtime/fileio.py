"""Writing files so that nothing is lost or half-written, and checking outputs before work starts.

Every file the suite writes goes through `atomic_write` (or `write_json` / `write_bytes` on top of it):
the data goes to a unique hidden temporary name in the same folder, which is renamed over the target
only when complete and removed on any failure (an exception of any kind, Ctrl-C included). Commands
check their outputs with `check_output_file` / `check_output_dir` / `refuse_overwrite` before any work,
so a bad `--json` path fails in a second, not after an hour, and no command overwrites its own input.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import IO, Iterable, Iterator, Optional

from ddrnet.runtime.errors import DDRNetError


def _reason(err: OSError) -> str:
    return err.strerror or str(err)


def partial_name(path: str) -> str:
    """A unique hidden temporary path beside `path`, keeping its extension (writers such as OpenCV's
    pick the container from it)."""
    folder, name = os.path.split(os.path.abspath(path))
    stem, ext = os.path.splitext(name)
    fd, tmp = tempfile.mkstemp(prefix="." + stem + ".", suffix=".partial" + ext, dir=folder)
    os.close(fd)
    return tmp


@contextlib.contextmanager
def atomic_path(path: str, make_parents: bool = True) -> Iterator[str]:
    """Yield a temporary path to write; it replaces `path` when the block ends without error and
    is removed otherwise. For writers that take a file name (cv2.imwrite, onnx.save, paddle.save)."""
    try:
        if make_parents:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = partial_name(path)
    except OSError as err:
        raise DDRNetError("{}: cannot write ({})".format(path, _reason(err))) from None
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as err:
        _remove(tmp)
        raise DDRNetError("{}: cannot write ({})".format(path, _reason(err))) from None
    except BaseException:
        _remove(tmp)
        raise


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w", encoding: Optional[str] = "utf-8") -> Iterator[IO]:
    """`open(path, mode)` that publishes the file only when the block completes."""
    if "b" in mode:
        encoding = None
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.remove(path)


def write_bytes(path: str, data: bytes) -> None:
    with atomic_write(path, "wb") as f:
        f.write(data)


def write_text(path: str, text: str) -> None:
    with atomic_write(path) as f:
        f.write(text)


def write_json(data: object, path: str, indent: int = 2) -> None:
    """JSON, atomically. Values JSON cannot hold (numpy scalars) must be converted by the caller."""
    text = json.dumps(data, indent=indent) + "\n"  # serialise first: a TypeError writes nothing
    write_text(path, text)


# -- checks before work ------------------------------------------------------------------------

def _existing_ancestor(path: str) -> str:
    folder = os.path.abspath(path)
    while not os.path.exists(folder):
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    return folder


def _check_creatable(path: str, what: str) -> None:
    """The folder that would hold `path` exists (or can be made) and is writable."""
    ancestor = _existing_ancestor(os.path.dirname(os.path.abspath(path)))
    if not os.path.isdir(ancestor):
        raise DDRNetError("{}: cannot write {} ({} is not a folder)".format(path, what, ancestor))
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise DDRNetError("{}: cannot write {} ({} is not writable)".format(path, what, ancestor))


def _same_file(a: str, b: str) -> bool:
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


def refuse_overwrite(outputs: Iterable[str], inputs: Iterable[str], option: str) -> None:
    """One-line error when an output file would replace an input file."""
    inputs = [p for p in inputs if p]
    for out in outputs:
        for src in inputs:
            if _same_file(out, src):
                raise DDRNetError("{}: {} would overwrite the input {}; choose another output".format(
                    out, option, src))


def check_output_file(path: Optional[str], option: str, inputs: Iterable[str] = ()) -> Optional[str]:
    """Check an output file before any work: not a folder, not an input, its folder writable."""
    if not path:
        return path
    if os.path.isdir(path):
        raise DDRNetError("{}: {} is a folder; give a file name".format(path, option))
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise DDRNetError("{}: {} is not writable".format(path, option))
    refuse_overwrite([path], inputs, option)
    _check_creatable(path, option)
    return path


def check_output_dir(path: Optional[str], option: str) -> Optional[str]:
    """Check an output folder before any work (it is created only once something is written)."""
    if not path:
        return path
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise DDRNetError("{}: {} is a file, not a folder".format(path, option))
        if not os.access(path, os.W_OK | os.X_OK):
            raise DDRNetError("{}: {} is not writable".format(path, option))
        return path
    _check_creatable(os.path.join(path, "x"), option)
    return path


def make_dir(path: str) -> str:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise DDRNetError("{}: cannot create output folder ({})".format(path, _reason(err))) from None
    return path

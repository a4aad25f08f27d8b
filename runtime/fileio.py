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
import secrets
import shutil
import tempfile
from typing import IO, Iterable, Iterator, Optional

from ddrnet.runtime.errors import DDRNetError

# read once at import: os.umask can only be read by setting it, which is not thread-safe later on
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def _reason(err: OSError) -> str:
    return err.strerror or str(err)


def partial_name(path: str, private: bool = False) -> str:
    """A unique hidden temporary path beside `path`, keeping its extension (writers such as OpenCV's
    pick the container from it). `private`: the file stays owner-only (mode 0600) from its creation."""
    folder, name = os.path.split(os.path.abspath(path))
    stem, ext = os.path.splitext(name)
    fd, tmp = tempfile.mkstemp(prefix="." + stem + ".", suffix=".partial" + ext, dir=folder)
    os.close(fd)
    if not private:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it owner-only; the published file gets the usual mode
    return tmp


@contextlib.contextmanager
def atomic_path(path: str, make_parents: bool = True, private: bool = False) -> Iterator[str]:
    """Yield a temporary path to write; it replaces `path` when the block ends without error and
    is removed otherwise. For writers that take a file name (cv2.imwrite, onnx.save, paddle.save).
    `private`: owner-only from the start (a secret key is never readable by others, not even empty)."""
    try:
        if make_parents:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = partial_name(path, private)
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
def atomic_write(path: str, mode: str = "w", encoding: Optional[str] = "utf-8",
                 private: bool = False) -> Iterator[IO]:
    """`open(path, mode)` that publishes the file only when the block completes (`private`: see atomic_path)."""
    if "b" in mode:
        encoding = None
    with atomic_path(path, private=private) as tmp:
        with open(tmp, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def _unused_name(parent: str, prefix: str) -> str:
    while True:
        path = os.path.join(parent, "{}-{}".format(prefix, secrets.token_hex(4)))
        if not os.path.lexists(path):
            return path


@contextlib.contextmanager
def atomic_dir(path: str) -> Iterator[str]:
    """Yield a new empty folder beside `path` to fill; it replaces `path` (a previous version is
    removed) when the block ends without error, and is removed otherwise, so `path` is always either
    the old complete folder or the new one. For folder outputs: checkpoints, exported model dirs."""
    parent, base = os.path.split(os.path.abspath(path))
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = _unused_name(parent, ".tmp-" + base)
        os.mkdir(tmp)  # not mkdtemp: the folder keeps the umask's permissions once renamed
    except OSError as err:
        raise DDRNetError("{}: cannot write ({})".format(path, _reason(err))) from None
    old = None
    try:
        yield tmp
        if os.path.lexists(path):
            old = _unused_name(parent, ".old-" + base)
            os.replace(path, old)
        os.replace(tmp, path)
    except OSError as err:
        raise DDRNetError("{}: cannot write ({})".format(path, _reason(err))) from None
    finally:  # on any error, Ctrl-C included
        if old and not os.path.lexists(path):
            os.replace(old, path)  # the new one did not arrive: the previous one goes back
        for leftover in (tmp, old):
            if leftover and os.path.lexists(leftover):
                shutil.rmtree(leftover, ignore_errors=True)


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

def nearest_existing(path: str) -> str:
    """The nearest existing folder at or above `path`, spelt as the user spelt it (relative stays so)."""
    folder = os.path.normpath(path)
    while not os.path.exists(folder):
        parent = os.path.dirname(folder)
        if parent in ("", folder):
            return parent or "."
        folder = parent
    return folder


def _check_creatable(folder: str, path: str, option: str) -> None:
    """`folder` exists or can be created, and a file can be created in it: probed with a real
    temporary file in its nearest existing ancestor, because os.access says yes to root even on
    read-only or virtual file systems (/proc). Errors name `path`, the output the user gave."""
    ancestor = nearest_existing(folder)
    if not os.path.isdir(ancestor):
        raise DDRNetError("{}: cannot write {} ({} is a file, not a folder)".format(path, option, ancestor))
    try:
        fd, probe = tempfile.mkstemp(prefix=".ddrnet-probe-", dir=ancestor)
    except OSError as err:
        raise DDRNetError("{}: cannot write {} (no file can be created in {}: {})".format(
            path, option, ancestor, _reason(err))) from None
    os.close(fd)
    _remove(probe)


def _identity(path: str) -> object:
    """What makes two spellings the same file: (device, inode) when it exists, else its real path."""
    try:
        stat = os.stat(path)
        return stat.st_dev, stat.st_ino
    except OSError:
        return os.path.realpath(path)


def _inside(path: str, folder: str) -> bool:
    real, top = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([real, top]) == top


def refuse_overwrite(outputs: Iterable[str], inputs: Iterable[str], option: str) -> None:
    """One-line error when an output would replace an input: an input file itself (however spelt:
    links, `..`), or an existing file inside an input folder (a model dir, a data root, a folder of
    images). Linear in outputs + inputs: a predict run checks thousands of each."""
    inputs = [p for p in inputs if p]
    files = {_identity(p): p for p in inputs if not os.path.isdir(p)}
    folders = [p for p in inputs if os.path.isdir(p)]
    for out in outputs:
        src = files.get(_identity(out))
        if src is None and folders and os.path.isfile(out):
            src = next((f for f in folders if _inside(out, f)), None)
        if src is not None:
            raise DDRNetError("{}: {} would overwrite the input {}; choose another output".format(out, option, src))


def refuse_replacing(folder: str, inputs: Iterable[str], option: str) -> None:
    """One-line error when replacing (or filling) the output folder `folder` would destroy an input
    inside it, e.g. `export --weights runs/x/best_model --out runs/x`."""
    for src in [p for p in inputs if p]:
        if os.path.exists(src) and _inside(src, folder):
            raise DDRNetError("{}: {} holds the input {}, which writing there would replace; choose another "
                              "output folder".format(folder, option, src))


def check_output_file(path: Optional[str], option: str, inputs: Iterable[str] = ()) -> Optional[str]:
    """Check an output file before any work: not a folder, not an input, its folder writable."""
    if not path:
        return path
    if os.path.isdir(path):
        raise DDRNetError("{}: {} is a folder; give a file name".format(path, option))
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise DDRNetError("{}: {} is not writable".format(path, option))
    refuse_overwrite([path], inputs, option)
    _check_creatable(os.path.dirname(path) or ".", path, option)
    return path


def check_output_dir(path: Optional[str], option: str) -> Optional[str]:
    """Check an output folder before any work (it is created only once something is written)."""
    if not path:
        return path
    if os.path.exists(path) and not os.path.isdir(path):
        raise DDRNetError("{}: {} is a file, not a folder".format(path, option))
    _check_creatable(path, path, option)
    return path


def make_dir(path: str) -> str:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise DDRNetError("{}: cannot create output folder ({})".format(path, _reason(err))) from None
    return path

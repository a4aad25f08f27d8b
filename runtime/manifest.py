"""`deploy.yaml`: the manifest of an exported model dir, and the integrity check the runtime runs
before it loads anything (every listed file inside the dir, present, and matching its SHA-256)."""
from __future__ import annotations

import hashlib
import os
from typing import Dict, List, Optional

import numpy as np
import yaml

from ddrnet.runtime.errors import DDRNetError
from ddrnet.runtime.fileio import atomic_write

MANIFEST_NAME = "deploy.yaml"
SCHEMA_VERSION = 1
OUTPUT_OPS = ("argmax", "softmax", "none", "lowres_logits")
COLOR_ORDERS = ("RGB", "BGR")
REQUIRED_KEYS = ("schema_version", "model_name", "class_names", "palette", "precision", "input",
                 "output", "files")


def sha256_file(path: str, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_path(model_dir: str) -> str:
    return os.path.join(model_dir, MANIFEST_NAME)


def resolve_file(model_dir: str, rel_path: str) -> str:
    """Absolute path of a listed file; refuses anything that would leave the model dir."""
    where = manifest_path(model_dir)
    if not isinstance(rel_path, str) or not rel_path:
        raise DDRNetError("{}: a file entry has no path".format(where))
    if os.path.isabs(rel_path) or rel_path.startswith(("/", "\\")):
        raise DDRNetError("{}: file path {!r} must be relative to the model dir".format(where, rel_path))
    if ".." in rel_path.replace("\\", "/").split("/"):
        raise DDRNetError("{}: file path {!r} must not contain '..'".format(where, rel_path))
    root = os.path.realpath(model_dir)
    full = os.path.realpath(os.path.join(root, rel_path))
    # realpath follows symlinks, so a link pointing out of the dir is caught here too
    if os.path.commonpath([root, full]) != root:
        raise DDRNetError("{}: file path {!r} points outside the model dir".format(where, rel_path))
    return full


def _require(cond: bool, where: str, problem: str) -> None:
    if not cond:
        raise DDRNetError("{}: {}".format(where, problem))


def _is_number_list(value, length: int) -> bool:
    return (isinstance(value, list) and len(value) == length
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value))


def validate_manifest(manifest: dict, where: str, require_files: bool = True) -> None:
    """Schema check; `where` names the file in the error messages. `require_files=False` accepts
    an empty file list (an in-memory manifest for Predictor.from_backend)."""
    _require(isinstance(manifest, dict), where, "not a mapping (is this a deploy.yaml?)")
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    _require(not missing, where, "missing key(s): " + ", ".join(missing))
    version = manifest["schema_version"]
    _require(version == SCHEMA_VERSION, where,
             "schema_version {!r} is not supported (this runtime reads {})".format(version, SCHEMA_VERSION))
    _require(isinstance(manifest["model_name"], str) and manifest["model_name"] != "", where,
             "model_name must be a non-empty string")

    names = manifest["class_names"]
    _require(isinstance(names, list) and names and all(isinstance(n, str) for n in names), where,
             "class_names must be a non-empty list of strings")
    _require(len(names) <= 255, where, "at most 255 classes fit a uint8 mask")
    if "num_classes" in manifest:
        _require(manifest["num_classes"] == len(names), where,
                 "num_classes {} but {} class_names".format(manifest["num_classes"], len(names)))
    palette = manifest["palette"]
    _require(isinstance(palette, list) and len(palette) == len(names)
             and all(_is_number_list(c, 3) and all(0 <= v <= 255 for v in c) for c in palette), where,
             "palette must hold one [R, G, B] (0-255) per class ({} classes)".format(len(names)))
    _require(isinstance(manifest["precision"], str), where, "precision must be a string (fp32, int8, ...)")

    inp = manifest["input"]
    _require(isinstance(inp, dict), where, "input must be a mapping")
    for key in ("shape", "mean", "std", "color_order"):
        _require(key in inp, where, "input.{} missing".format(key))
    shape = inp["shape"]
    _require(isinstance(shape, list) and len(shape) == 4
             and all(isinstance(d, int) and (d > 0 or d == -1) for d in shape), where,
             "input.shape must be [N, C, H, W] with -1 for a dynamic dim, got {!r}".format(shape))
    _require(shape[1] == 3, where, "input.shape must have 3 channels, got {!r}".format(shape))
    _require(inp.get("layout", "NCHW") == "NCHW", where, "only input.layout NCHW is supported")
    _require(inp["color_order"] in COLOR_ORDERS, where,
             "input.color_order must be RGB or BGR, got {!r}".format(inp["color_order"]))
    _require(_is_number_list(inp["mean"], 3), where, "input.mean must be 3 numbers")
    _require(_is_number_list(inp["std"], 3) and all(s != 0 for s in inp["std"]), where,
             "input.std must be 3 non-zero numbers")

    out = manifest["output"]
    _require(isinstance(out, dict) and out.get("op") in OUTPUT_OPS, where,
             "output.op must be one of {}".format(", ".join(OUTPUT_OPS)))

    files = manifest["files"]
    _require(isinstance(files, list) and (files or not require_files), where, "files must be a non-empty list")
    for entry in files:
        _require(isinstance(entry, dict) and isinstance(entry.get("format"), str)
                 and isinstance(entry.get("path"), str), where,
                 "each files entry needs a format and a path, got {!r}".format(entry))
        _require(isinstance(entry.get("backend", ""), str), where,
                 "a files entry's backend must be a backend name, got {!r}".format(entry.get("backend")))
    engines = manifest.get("engines", [])
    _require(isinstance(engines, list) and all(isinstance(e, dict) and isinstance(e.get("path"), str)
                                               and isinstance(e.get("precision"), str) for e in engines), where,
             "engines must be a list of entries with a path and a precision")
    target = manifest.get("target", {})
    _require(isinstance(target, dict) and isinstance(target.get("name", ""), str), where,
             "target must be a mapping with a name")


def to_plain(value):
    """Deep copy as plain YAML types: tuples and numpy arrays become lists, numpy scalars numbers
    (yaml.safe_dump refuses both, and callers naturally pass CLASS_NAMES / PALETTE)."""
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_manifest(model_dir: str, manifest: dict) -> dict:
    """Fill in each listed file's SHA-256, validate, and write `deploy.yaml` atomically.
    Returns the manifest as written."""
    data = to_plain(manifest)
    data.setdefault("schema_version", SCHEMA_VERSION)
    where = manifest_path(model_dir)
    validate_manifest(data, where)
    for entry in listed_entries(data):
        full = resolve_file(model_dir, entry["path"])
        if not os.path.isfile(full):
            raise DDRNetError("{}: listed in {} but missing".format(full, where))
        entry["sha256"] = sha256_file(full)
    with atomic_write(where) as f:
        yaml.safe_dump(data, f, sort_keys=False, default_flow_style=None, allow_unicode=True)
    return data


def listed_entries(manifest: dict) -> List[dict]:
    """Every file deploy.yaml vouches for: the model files and the TensorRT engines `ddrnet engine` built."""
    return list(manifest["files"]) + list(manifest.get("engines", []))


def read_manifest_bytes(model_dir: str) -> bytes:
    """deploy.yaml's bytes, read once: a signature is checked on exactly what is then parsed."""
    where = manifest_path(model_dir)
    if not os.path.isdir(model_dir):
        raise DDRNetError("{}: no such model dir".format(model_dir))
    if not os.path.isfile(where):
        raise DDRNetError("{}: missing (not an exported model dir?)".format(where))
    with open(where, "rb") as f:
        return f.read()


def load_manifest(model_dir: str, verify: bool = True, data: Optional[bytes] = None,
                  missing_ok: bool = False) -> dict:
    """Read, validate and (with `verify`) check every listed file against its SHA-256.
    `data`: deploy.yaml's bytes when the caller already read them (read_manifest_bytes).
    `missing_ok`: a listed file that is absent is skipped, not refused (the Predictor: a bundle copied
    without the files its backend does not load; `find_file` names a missing one the backend needs);
    every file present is still checked."""
    where = manifest_path(model_dir)
    if data is None:
        data = read_manifest_bytes(model_dir)
    try:
        manifest = yaml.safe_load(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise DDRNetError("{}: not UTF-8 text".format(where)) from None
    except yaml.YAMLError as err:
        raise DDRNetError("{}: not valid YAML ({})".format(where, str(err).splitlines()[0])) from None
    validate_manifest(manifest, where)
    if verify:
        for entry in listed_entries(manifest):
            if missing_ok and not os.path.isfile(resolve_file(model_dir, entry["path"])):
                continue
            _verify_file(model_dir, entry, where)
    return manifest


def _verify_file(model_dir: str, entry: dict, where: str) -> None:
    full = resolve_file(model_dir, entry["path"])
    if not os.path.isfile(full):
        raise DDRNetError("{}: listed in {} but missing".format(full, where))
    expected = entry.get("sha256")
    if not isinstance(expected, str) or not expected:
        raise DDRNetError("{}: no sha256 for {}".format(where, entry["path"]))
    if sha256_file(full) != expected.lower():
        raise DDRNetError("{}: SHA-256 mismatch with deploy.yaml (file changed or corrupt)".format(full))


def file_entry(manifest: dict, fmt: str, role: str = "model", backend: Optional[str] = None) -> Optional[dict]:
    """The entry of this format and role that `backend` opens: one listed for it (`backend: NAME`, e.g. the
    OpenVINO-shaped INT8 graph of a default INT8 export) first, else one listed for every backend (no
    `backend` key); an entry listed for another backend never. None when there is none."""
    candidates = [e for e in manifest["files"] if e["format"] == fmt and e.get("role", "model") == role]
    own = [e for e in candidates if backend is not None and e.get("backend") == backend]
    shared = [e for e in candidates if "backend" not in e]
    return (own + shared + [None])[0]


def find_file(manifest: dict, model_dir: str, fmt: str, role: str = "model",
              needed_by: Optional[str] = None) -> Optional[str]:
    """Absolute path of the file with this format and role that backend `needed_by` opens (file_entry),
    or None when the manifest has none. With `needed_by`, a listed file that is absent is an error naming it."""
    entry = file_entry(manifest, fmt, role, needed_by)
    if entry is None:
        return None
    full = resolve_file(model_dir, entry["path"])
    if needed_by and not os.path.isfile(full):
        raise DDRNetError("{}: listed in {} but missing; the {} backend needs it".format(
            full, MANIFEST_NAME, needed_by))
    return full


def formats(manifest: dict) -> List[str]:
    """The model formats listed, in manifest order, without duplicates."""
    seen = []  # type: List[str]
    for entry in manifest["files"]:
        if entry["format"] not in seen:
            seen.append(entry["format"])
    return seen


def file_sizes(manifest: dict, model_dir: str, fmt: str) -> Dict[str, int]:
    """Bytes on disk of every file of one format (model + params), keyed by relative path."""
    return {e["path"]: os.path.getsize(resolve_file(model_dir, e["path"]))
            for e in manifest["files"] if e["format"] == fmt}

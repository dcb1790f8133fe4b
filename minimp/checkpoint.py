"""Checkpoints: model, master weights, optimizer and scaler state in one file.

The file is a NumPy ``.npz`` archive of plain arrays plus one JSON document, read
with ``allow_pickle=False``: opening a checkpoint from a stranger never runs code
from it. Loading checks the whole file against the objects it is loaded into
(names, shapes, dtypes) before changing any of them, so a file from another
model, or a truncated one, raises ``CheckpointError`` and leaves everything as it
was. bfloat16 arrays, which ``.npz`` cannot describe, are stored as their uint16
bits and their dtype is recorded in the JSON.

Reading trusts nothing in the file: it is opened once and everything comes from
that one open file; the JSON is checked for its structure before it is used;
only the members it names are read (any other member is refused, unread); each
member must be stored uncompressed, as ``np.savez`` writes it, so nothing is ever
inflated; and each ``.npy`` header's dtype and shape are checked against the
member's size before its data is read.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import tempfile
import tokenize
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from minimp.tensor import DTYPES

__all__ = ["CheckpointError", "Contents", "load", "peek", "prepare", "read", "save"]

FORMAT = "minimp-checkpoint-1"


class CheckpointError(ValueError):
    """The file is not a checkpoint these objects can be loaded from."""


SECTIONS = ("model/", "masters/", "optimizer/")
ARRAY_DTYPES = {
    "float16": np.dtype(np.float16),
    "float32": np.dtype(np.float32),
    "bfloat16": np.dtype(np.uint16),
}
META_KEYS = {"format", "dtypes", "extra", "optimizer", "scaler", "digest"}
MAX_META_BYTES = 1 << 24


def save(
    path: str | os.PathLike,
    *,
    model,
    optimizer=None,
    masters=None,
    scaler=None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write everything needed to continue a run bit for bit. ``extra`` holds JSON-able
    values the caller needs too (step count, history).

    Written to a new temporary file in the same directory (created exclusively, so
    it never follows a link planted there) and renamed over ``path``: an interrupted
    save never leaves a half-written checkpoint, and a failed one no temporary."""
    arrays: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {"format": FORMAT, "dtypes": {}, "extra": extra or {}}

    def put(key: str, array: np.ndarray) -> None:
        meta["dtypes"][key] = str(array.dtype)
        arrays[key] = array.view(np.uint16) if array.dtype == DTYPES["bfloat16"] else array

    for name, value in model.state_dict().items():
        put(f"model/{name}", value)
    if masters is not None:
        for name, value in masters.state_dict().items():
            put(f"masters/{name}", value)
    if optimizer is not None:
        state = optimizer.state_dict()
        meta["optimizer"] = {"param_groups": state["param_groups"], "counters": {}}
        for i, values in state["state"].items():
            for key, value in values.items():
                if isinstance(value, int):
                    meta["optimizer"]["counters"][f"{i}/{key}"] = value
                else:
                    put(f"optimizer/{i}/{key}", value)
    if scaler is not None:
        meta["scaler"] = scaler.state_dict()
    meta["digest"] = _digest(meta, arrays)
    arrays["meta.json"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)

    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory: give a file name, e.g. {path / 'run.npz'}")
    fd, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(partial, 0o644)  # mkstemp makes it private; a checkpoint is a plain file
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        raise


@dataclass(frozen=True)
class Contents:
    """A checkpoint as read, once, from its file: the checked JSON and the arrays."""

    path: str
    meta: dict[str, Any]
    arrays: dict[str, np.ndarray]

    @property
    def extra(self) -> dict[str, Any]:
        return self.meta["extra"]


def load(
    source: str | os.PathLike | Contents,
    *,
    model,
    optimizer=None,
    masters=None,
    scaler=None,
    allow_nonfinite: bool = False,
) -> dict:
    """Load a checkpoint into the given objects and return its ``extra`` dict; all or
    nothing. NaN or inf in weights or optimizer state are refused unless
    ``allow_nonfinite`` (a diverged run, loaded to look at it)."""
    contents = source if isinstance(source, Contents) else read(source)
    prepare(
        contents,
        model=model,
        optimizer=optimizer,
        masters=masters,
        scaler=scaler,
        allow_nonfinite=allow_nonfinite,
    )()
    return contents.extra


def peek(path: str | os.PathLike) -> dict:
    """The ``extra`` dict of a checkpoint, without loading anything."""
    return read(path).extra


def prepare(
    contents: Contents,
    *,
    model,
    optimizer=None,
    masters=None,
    scaler=None,
    allow_nonfinite: bool = False,
) -> Callable[[], None]:
    """Check ``contents`` against the objects, loading it into throw-away copies of
    them, and return the function that loads it for real. A failure raises
    ``CheckpointError`` here, before any object has changed."""
    path, meta, arrays = contents.path, contents.meta, contents.arrays

    def section(prefix: str) -> dict[str, np.ndarray]:
        return {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}

    model_state, master_state = section("model/"), section("masters/")
    if not allow_nonfinite:
        for key, value in arrays.items():
            if not np.isfinite(value.astype(np.float32)).all():
                bad = int((~np.isfinite(value.astype(np.float32))).sum())
                raise CheckpointError(
                    f"{path}: {key} holds {bad} NaN or inf values (a diverged run?); pass "
                    "allow_nonfinite=True to load it anyway"
                )
    optimizer_state = None
    if optimizer is not None:
        if "optimizer" not in meta:
            raise CheckpointError(f"{path}: holds no optimizer state")
        state: dict[int, dict[str, Any]] = {}
        for key, value in section("optimizer/").items():
            i, name = key.split("/", 1)
            state.setdefault(int(i), {})[name] = value
        for key, value in meta["optimizer"]["counters"].items():
            i, name = key.split("/", 1)
            state.setdefault(int(i), {})[name] = value
        optimizer_state = {"param_groups": meta["optimizer"]["param_groups"], "state": state}
    if masters is not None and not master_state:
        raise CheckpointError(f"{path}: holds no master weights")
    if scaler is not None and "scaler" not in meta:
        raise CheckpointError(f"{path}: holds no loss-scaler state")

    targets = [
        (model, model_state),
        (masters, master_state),
        (optimizer, optimizer_state),
        (scaler, meta.get("scaler")),
    ]
    for obj, state in targets:
        if obj is not None:
            try:
                copy.deepcopy(obj).load_state_dict(copy.deepcopy(state))
            except (KeyError, ValueError, TypeError, RuntimeError, AttributeError) as err:
                raise CheckpointError(
                    f"{path}: does not fit this {type(obj).__name__}: {err}"
                ) from None

    def apply() -> None:
        for obj, state in targets:
            if obj is not None:
                obj.load_state_dict(state)

    return apply


def read(path: str | os.PathLike) -> Contents:
    """Open the file once and read the checkpoint from it, trusting nothing in it."""
    try:
        with open(path, "rb") as f, zipfile.ZipFile(f) as archive:
            size = os.fstat(f.fileno()).st_size
            infos = archive.infolist()
            names = [info.filename for info in infos]
            if len(set(names)) != len(names):
                raise CheckpointError(f"{path}: a member appears twice in the archive")
            members = {info.filename: info for info in infos}
            if "meta.json.npy" not in members:
                raise CheckpointError(f"{path}: has no meta.json: not a minimp checkpoint")
            raw = _read_member(path, archive, members["meta.json.npy"], size, np.dtype(np.uint8))
            if raw.ndim != 1 or raw.size > MAX_META_BYTES:
                raise CheckpointError(f"{path}: meta.json is not a short byte string")
            meta = json.loads(raw.tobytes().decode())
            _check_meta(path, meta)
            expected = {f"{key}.npy" for key in meta["dtypes"]} | {"meta.json.npy"}
            if set(members) != expected:
                raise CheckpointError(
                    f"{path}: members {sorted(expected - set(members))} are missing and "
                    f"{sorted(set(members) - expected)} are not named by its metadata"
                )
            arrays = {}
            for key, dtype in meta["dtypes"].items():
                stored = ARRAY_DTYPES[dtype]
                array = _read_member(path, archive, members[f"{key}.npy"], size, stored)
                arrays[key] = array
            if "digest" in meta and meta["digest"] != _digest(meta, arrays):
                raise CheckpointError(
                    f"{path}: its contents do not match the digest saved with them: the file "
                    "was edited or corrupted after it was written"
                )
            for key, dtype in meta["dtypes"].items():
                if dtype == "bfloat16":
                    arrays[key] = arrays[key].view(DTYPES["bfloat16"])
    except (FileNotFoundError, CheckpointError):
        raise
    except (
        OSError,
        ValueError,
        KeyError,
        EOFError,
        zipfile.BadZipFile,
        zlib.error,
        UnicodeDecodeError,
        NotImplementedError,  # zipfile: a version or compression it does not know
        RuntimeError,  # zipfile: an encrypted member
        TypeError,  # a JSON value of a type no check above foresaw
        SyntaxError,  # numpy's .npy header parser: a flipped byte in the header's dict
        tokenize.TokenError,  # ... and its fallback tokenizer on the same
    ) as err:
        raise CheckpointError(
            f"{path}: not a readable minimp checkpoint ({type(err).__name__}: {err}); "
            "the file may be truncated or corrupted"
        ) from None
    return Contents(str(path), meta, arrays)


def _digest(meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 of the metadata (but the digest) and of every array's name and bytes.
    Not a signature (whoever edits the file can recompute it): it makes an edit or
    corruption that leaves a well-formed file evident. Files without one (hand-made,
    or older) are checked by their structure alone."""
    h = hashlib.sha256(
        json.dumps({k: v for k, v in meta.items() if k != "digest"}, sort_keys=True).encode()
    )
    for key in sorted(k for k in arrays if k != "meta.json"):
        h.update(key.encode() + b"\0" + np.ascontiguousarray(arrays[key]).tobytes())
    return h.hexdigest()


def _read_member(
    path, archive: zipfile.ZipFile, info: zipfile.ZipInfo, size: int, dtype
) -> np.ndarray:
    """One ``.npy`` member, checked before its data is read: stored uncompressed, of
    ``dtype``, and exactly as long as its header's shape says."""
    name = info.filename
    if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
        raise CheckpointError(
            f"{path}: member {name} is compressed; minimp writes checkpoints uncompressed "
            "(np.savez) and never inflates a member"
        )
    if info.file_size > size:
        raise CheckpointError(f"{path}: member {name} claims more bytes than the file has")
    with archive.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, found = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, found = np.lib.format.read_array_header_2_0(f)
        else:
            raise CheckpointError(f"{path}: member {name} has .npy version {version}")
        if found != dtype or fortran:
            raise CheckpointError(
                f"{path}: member {name} holds {found} (fortran order {fortran}), expected {dtype}"
            )
        count = 1
        for n in shape:
            count *= n
        nbytes = count * dtype.itemsize
        if info.file_size - f.tell() != nbytes:
            raise CheckpointError(
                f"{path}: member {name} declares shape {shape} ({nbytes} bytes) but holds "
                f"{info.file_size - f.tell()} bytes"
            )
        content = f.read(nbytes)
        if len(content) != nbytes or f.read(1):  # reading to the end checks its CRC
            raise CheckpointError(f"{path}: member {name} is truncated")
    return np.frombuffer(content, dtype).reshape(shape).copy()


def _check_meta(path, meta: Any) -> None:
    """The structure of the JSON, before anything reads it."""

    def fail(what: str) -> None:
        raise CheckpointError(f"{path}: malformed metadata: {what}")

    if not isinstance(meta, dict):
        fail(f"a {type(meta).__name__}, expected an object")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unknown checkpoint format {meta.get('format')!r}")
    if set(meta) - META_KEYS or not {"dtypes", "extra"} <= set(meta):
        fail(f"keys {sorted(meta)}, expected {sorted(META_KEYS)} (optimizer and scaler optional)")
    if not isinstance(meta["extra"], dict):
        fail(f"extra is a {type(meta['extra']).__name__}, expected an object")
    dtypes = meta["dtypes"]
    if not isinstance(dtypes, dict):
        fail(f"dtypes is a {type(dtypes).__name__}, expected an object")
    optimizer = meta.get("optimizer")
    for key, dtype in dtypes.items():
        if not isinstance(dtype, str) or dtype not in ARRAY_DTYPES:
            fail(f"array {key!r} has dtype {dtype!r}; allowed: {', '.join(ARRAY_DTYPES)}")
        if not key.startswith(SECTIONS) or key == "meta.json":
            fail(f"array {key!r} is in no section ({', '.join(SECTIONS)})")
        if key.startswith("optimizer/"):
            _state_index(key[len("optimizer/") :], fail)
            if optimizer is None:
                fail(f"array {key!r} is optimizer state, but the file has no optimizer section")
    if optimizer is not None:
        if not isinstance(optimizer, dict) or set(optimizer) != {"param_groups", "counters"}:
            fail("optimizer must be an object with 'param_groups' and 'counters'")
        groups, counters = optimizer["param_groups"], optimizer["counters"]
        if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
            fail("optimizer param_groups must be a list of objects")
        if not isinstance(counters, dict):
            fail("optimizer counters must be an object")
        for key, value in counters.items():
            _state_index(key, fail)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                fail(f"optimizer counter {key!r} is {value!r}, expected an integer >= 0")
    if "scaler" in meta and not isinstance(meta["scaler"], dict):
        fail(f"scaler is a {type(meta['scaler']).__name__}, expected an object")


def _state_index(key: str, fail) -> int:
    """The parameter index in an optimizer state key "<index>/<name>"."""
    index, _, name = key.partition("/")
    if not index.isdigit() or not name:
        fail(f"optimizer state key {key!r} is not '<parameter index>/<name>'")
    return int(index)

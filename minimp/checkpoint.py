"""Checkpoints: model, master weights, optimizer and scaler state in one file.

The file is a NumPy ``.npz`` archive of plain arrays plus one JSON document, read
with ``allow_pickle=False``: opening a checkpoint from a stranger never runs code
from it. Loading checks the whole file against the objects it is loaded into
(names, shapes, dtypes) before changing any of them, so a file from another
model, or a truncated one, raises ``CheckpointError`` and leaves everything as it
was. bfloat16 arrays, which ``.npz`` cannot describe, are stored as their uint16
bits and their dtype is recorded in the JSON.
"""

from __future__ import annotations

import json
import os
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from minimp.tensor import DTYPES

__all__ = ["CheckpointError", "load", "peek", "save"]

FORMAT = "minimp-checkpoint-1"


class CheckpointError(ValueError):
    """The file is not a checkpoint these objects can be loaded from."""


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
    values the caller needs too (step count, history). Written to a temporary file and
    renamed, so an interrupted save never leaves a half-written checkpoint."""
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
    arrays["meta.json"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)

    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as f:
        np.savez(f, **arrays)
    os.replace(partial, path)


def load(path: str | os.PathLike, *, model, optimizer=None, masters=None, scaler=None) -> dict:
    """Load a checkpoint into the given objects and return its ``extra`` dict."""
    meta, arrays = _read(path)

    def section(prefix: str) -> dict[str, np.ndarray]:
        return {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}

    model_state = section("model/")
    master_state = section("masters/")
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

    # Check everything against throw-away copies first, then load for real: a
    # failure part-way can then never leave the objects half-loaded.
    targets = [
        (model, model_state),
        (masters, master_state),
        (optimizer, optimizer_state),
        (scaler, meta.get("scaler")),
    ]
    for obj, state in targets:
        if obj is not None:
            try:
                _dry_run(obj, state)
            except (KeyError, ValueError, TypeError) as err:
                raise CheckpointError(
                    f"{path}: does not fit this {type(obj).__name__}: {err}"
                ) from None
    for obj, state in targets:
        if obj is not None:
            obj.load_state_dict(state)
    return meta["extra"]


def peek(path: str | os.PathLike) -> dict:
    """The ``extra`` dict of a checkpoint, without loading anything."""
    return _read(path)[0]["extra"]


def _dry_run(obj: Any, state: Any) -> None:
    """Run ``obj.load_state_dict(state)`` on a copy of ``obj``, raising what it raises."""
    import copy

    copy.deepcopy(obj).load_state_dict(state)


def _read(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
        meta = json.loads(arrays.pop("meta.json").tobytes().decode())
    except FileNotFoundError:
        raise
    except (
        OSError,
        ValueError,
        KeyError,
        EOFError,
        zipfile.BadZipFile,
        zlib.error,
        UnicodeDecodeError,
    ) as err:
        raise CheckpointError(
            f"{path}: not a readable minimp checkpoint ({type(err).__name__}: {err}); "
            "the file may be truncated or corrupted"
        ) from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unknown checkpoint format {meta.get('format')!r}")
    for key, dtype in meta["dtypes"].items():
        if key not in arrays:
            raise CheckpointError(f"{path}: array {key!r} is missing")
        if dtype == "bfloat16":
            arrays[key] = arrays[key].view(DTYPES["bfloat16"])
        elif str(arrays[key].dtype) != dtype:
            raise CheckpointError(f"{path}: array {key!r} is {arrays[key].dtype}, expected {dtype}")
    return meta, arrays

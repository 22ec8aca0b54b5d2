"""Reading ``.pth`` / ``.ckpt`` / ``.safetensors`` weight files without running their code.

A pickle can execute anything while it is read. HonestFace never does that:

1. ``.safetensors`` are read with safetensors (no code at all);
2. ``.pth`` / ``.ckpt`` are read with ``torch.load(weights_only=True)``;
3. files that step 2 refuses because they also hold other objects (Lightning
   checkpoints carry hyper-parameters as OmegaConf containers, callbacks, ...) are read
   by :class:`RestrictedUnpickler`, which only rebuilds tensors and plain containers.
   Every other class or function named in the pickle becomes an inert
   :class:`BlockedObject` (nothing of it is imported or called), so the tensors can
   still be extracted.

Errors (missing, truncated, corrupt, not a weight file) raise
:class:`~honestface.errors.CheckpointError` naming the file.
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, MissingModelFileError

PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")

#: Storage class names (as pickled by torch) -> dtype.
_STORAGE_DTYPES: dict[str, torch.dtype] = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool, "ComplexFloatStorage": torch.complex64,
    "ComplexDoubleStorage": torch.complex128,
}


class BlockedObject:
    """Stand-in for an object whose class is not on the allow-list.

    It records the name it replaces and swallows whatever the pickle tries to do with
    it (construction arguments, state, items) without running any of the original code.
    """

    qualified_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> "BlockedObject":
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass

    def __repr__(self) -> str:
        return f"<blocked {self.qualified_name}>"


def _blocked(module: str, name: str) -> type[BlockedObject]:
    return type("Blocked", (BlockedObject,), {"qualified_name": f"{module}.{name}"})


def _rebuild_tensor(storage: torch.Tensor, offset: int, size: tuple, stride: tuple, *_: Any) -> torch.Tensor:
    return torch.as_strided(storage, tuple(size), tuple(stride), int(offset))


def _rebuild_parameter(data: torch.Tensor, *_: Any) -> torch.Tensor:
    return data


def _rebuild_from_type(func: Any, new_type: Any, args: tuple, state: Any = None) -> Any:
    # Tensor subclasses: rebuild the plain tensor. ``func`` came through find_class, so it is
    # an allow-listed rebuild function or an inert BlockedObject class; ``new_type`` is ignored.
    return func(*args)


class _StorageType:
    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for the ``data.pkl`` of a torch zip archive: tensors + plain containers only."""

    _ALLOWED = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "slice"): slice,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
        ("torch", "Size"): tuple,
    }

    def __init__(self, data: io.BytesIO, archive: zipfile.ZipFile, prefix: str, path: Path) -> None:
        super().__init__(data)
        self.archive = archive
        self.prefix = prefix
        self.path = path
        self.blocked: set[str] = set()
        self._storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        self.blocked.add(f"{module}.{name}")
        return _blocked(module, name)

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise CheckpointError(self.path, f"unsupported persistent id {pid!r:.60}", "torch tensor storages")
        storage_type, key, numel = pid[1], str(pid[2]), int(pid[4])
        if not isinstance(storage_type, _StorageType):
            dtype = getattr(storage_type, "dtype", None)
            if not isinstance(dtype, torch.dtype):
                raise CheckpointError(self.path, f"unknown storage type {storage_type!r:.60}", "a torch storage type")
            storage_type = _StorageType(dtype)
        if key not in self._storages:
            try:
                raw = self.archive.read(f"{self.prefix}/data/{key}")
            except (KeyError, zipfile.BadZipFile, OSError) as error:
                raise CheckpointError(self.path, f"storage {key} unreadable ({error})", "a complete torch archive") from error
            flat = torch.frombuffer(bytearray(raw), dtype=storage_type.dtype) if raw else \
                torch.empty(0, dtype=storage_type.dtype)
            if flat.numel() < numel:
                raise CheckpointError(self.path, f"storage {key} has {flat.numel()} elements, needs {numel}",
                                      "a complete torch archive")
            self._storages[key] = flat
        return self._storages[key]


def restricted_load(path: str | Path) -> tuple[Any, set[str]]:
    """Unpickle a torch zip archive with :class:`RestrictedUnpickler`.

    Returns the object (blocked classes replaced by :class:`BlockedObject`) and the set
    of blocked names.
    """
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise CheckpointError(path, f"not a readable torch zip archive ({error})",
                              "a file written by torch.save (zip format)") from error
    with archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if not pickles:
            raise CheckpointError(path, "the archive has no data.pkl", "a file written by torch.save")
        prefix = pickles[0][: -len("/data.pkl")] if "/" in pickles[0] else ""
        byteorder = f"{prefix}/byteorder"
        if byteorder in names and archive.read(byteorder).strip() not in (b"little",):
            raise CheckpointError(path, "big-endian tensors are not supported", "a little-endian checkpoint")
        try:
            unpickler = RestrictedUnpickler(io.BytesIO(archive.read(pickles[0])), archive, prefix, path)
            obj = unpickler.load()
        except CheckpointError:
            raise
        except Exception as error:  # malformed pickle streams raise many kinds of errors
            raise CheckpointError(path, f"cannot read the pickle ({type(error).__name__}: {error})",
                                  "a torch checkpoint") from error
    return obj, unpickler.blocked


def load_checkpoint_object(path: str | Path, what: str = "checkpoint") -> Any:
    """Whatever a ``.pth`` / ``.ckpt`` holds, read safely (see module doc).

    ``weights_only=True`` first; only if torch refuses an object type, the restricted
    unpickler (blocked objects become :class:`BlockedObject`).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingModelFileError(path.name, path.parent, what)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        refused = "weights_only" in str(error) or "Unsupported global" in str(error)
        if not refused:
            raise CheckpointError(path, f"corrupt pickle ({error})", f"a torch {what}") from error
    except Exception as error:  # torch raises many kinds on truncated/corrupt files
        raise CheckpointError(path, f"cannot read ({type(error).__name__}: {str(error)[:200]})",
                              f"a complete torch {what} (.pth/.ckpt)") from error
    obj, _ = restricted_load(path)
    return obj


def load_tensors(path: str | Path, what: str = "weights", state_key: str | None = "state_dict") -> dict[str, torch.Tensor]:
    """A flat ``name -> tensor`` dict from a ``.safetensors``, ``.pth`` or ``.ckpt`` file.

    For pickles holding a dict with ``state_key`` (Lightning's ``"state_dict"``) that
    entry is used. Non-tensor values are dropped.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingModelFileError(path.name, path.parent, what)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as error:
            raise CheckpointError(path, f"cannot read safetensors ({error})", f"a complete .safetensors {what}") from error
    obj = load_checkpoint_object(path, what)
    if isinstance(obj, dict) and state_key is not None and isinstance(obj.get(state_key), dict):
        obj = obj[state_key]
    if not isinstance(obj, dict):
        raise CheckpointError(path, f"holds a {type(obj).__name__}", f"a dict of tensors ({what})")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(path, "holds no tensors", f"a state dict ({what})")
    return tensors


def load_matching_state(module: torch.nn.Module, path: str | Path, what: str, expected: str,
                        state_key: str | None = "state_dict") -> torch.nn.Module:
    """Load a distributed state dict into ``module`` (built by the caller), strictly.

    A ``module.`` prefix (DataParallel) and BatchNorm's ``num_batches_tracked`` counters are
    dropped; missing or unexpected keys and mis-shaped tensors raise :class:`CheckpointError`
    naming the file and ``expected`` (what the file should be). Returns the module in eval mode.
    """
    path = Path(path)
    state = load_tensors(path, what=what, state_key=state_key)
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    wanted = {k: v for k, v in module.state_dict().items() if not k.endswith("num_batches_tracked")}
    missing, unexpected = sorted(set(wanted) - set(state)), sorted(set(state) - set(wanted))
    if missing or unexpected:
        raise CheckpointError(path, f"weights do not match {what}: missing {missing[:5]}, unexpected "
                                    f"{unexpected[:5]}", expected)
    for key, value in state.items():
        if tuple(value.shape) != tuple(wanted[key].shape):
            raise CheckpointError(path, f"'{key}' has shape {tuple(value.shape)}, {what} needs "
                                        f"{tuple(wanted[key].shape)}", expected)
    module.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    return module.eval()

"""Read a PyTorch state dict saved in PyTorch's legacy format into numpy arrays, without PyTorch.

The legacy format (torch.save before the zip container, "protocol 1001") is a
stream of pickles: a magic number, the protocol version, a dict of system
facts, the state dict itself (its tensors point to storages by persistent
id), the list of storage keys, then each storage's raw bytes (an int64
element count, then the little-endian elements), in that order.

A pickle can run any code on load, so the state dict is read by an unpickler
that builds only what a state dict of plain tensors needs: tensors
(torch._utils._rebuild_tensor_v2), the typed storages and OrderedDict. Any other
global, a truncated file or a layout it does not know is refused with
WeightsFileError. The caller checks the file's digest before it gets here
(tumorseg.model.efficientnet_lite).
"""

import collections
import io
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tumorseg.errors import ProjectError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
LEGACY_PROTOCOL = 1001  # torch.serialization.PROTOCOL_VERSION
STORAGE_DTYPES = {  # torch.<name> -> element type (little-endian)
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}
MAX_ELEMENTS = 2**31  # one storage of more elements (8 GiB of float32) is refused before it is read


class WeightsFileError(ProjectError, ValueError):
    """A weights file that is not a plain PyTorch state dict of tensors, or is damaged."""


@dataclass(frozen=True)
class StorageType:
    """A torch.*Storage class, as named in the pickle."""

    dtype: np.dtype


@dataclass
class Storage:
    """A storage the state dict points to; its bytes follow the pickle and are filled in afterwards."""

    key: str
    dtype: np.dtype
    size: int
    data: np.ndarray | None = None


@dataclass(frozen=True)
class TensorView:
    """A tensor of the state dict, as (storage, offset, shape, strides in elements), before its data is read."""

    storage: Storage
    offset: int
    shape: tuple
    stride: tuple

    def array(self) -> np.ndarray:
        data = self.storage.data
        if self.shape and min(self.shape) > 0:
            last = self.offset + sum((n - 1) * s for n, s in zip(self.shape, self.stride))
            if self.offset < 0 or min(self.stride) < 0 or last >= data.size:
                raise ValueError(f"a tensor of shape {self.shape} lies outside its storage of {data.size} elements")
        elif self.offset > data.size:
            raise ValueError(f"a tensor's offset {self.offset} lies outside its storage of {data.size} elements")
        strides = tuple(s * data.itemsize for s in self.stride)
        view = np.lib.stride_tricks.as_strided(data[self.offset:], self.shape, strides, writeable=False)
        return np.array(view)  # a copy: contiguous, writeable, independent of the storage


def rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    """torch._utils._rebuild_tensor_v2, as far as a state dict of plain tensors uses it."""
    if not isinstance(storage, Storage):
        raise pickle.UnpicklingError("a tensor whose storage is not a storage")
    if backward_hooks:
        raise pickle.UnpicklingError("a tensor with backward hooks")
    if not all(isinstance(n, int) for n in (storage_offset, *size, *stride)) or len(size) != len(stride):
        raise pickle.UnpicklingError("a tensor with a malformed shape or stride")
    return TensorView(storage, storage_offset, tuple(size), tuple(stride))


class StateDictUnpickler(pickle.Unpickler):
    """Unpickles a legacy state dict, building nothing but tensors, storages and ordered dicts."""

    def __init__(self, file):
        super().__init__(file)
        self.storages: dict[str, Storage] = {}

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return rebuild_tensor
        if module == "torch" and name in STORAGE_DTYPES:
            return StorageType(STORAGE_DTYPES[name])
        raise pickle.UnpicklingError(f"it names the global {module}.{name}, which a state dict of tensors does not need")

    def persistent_load(self, saved_id):
        if not (isinstance(saved_id, tuple) and len(saved_id) == 6 and saved_id[0] == "storage"):
            raise pickle.UnpicklingError(f"an unknown persistent id {str(saved_id)[:80]!r}")
        _, storage_type, key, _location, size, view_metadata = saved_id
        if not isinstance(storage_type, StorageType) or not isinstance(key, str) or not isinstance(size, int):
            raise pickle.UnpicklingError("a malformed storage reference")
        if view_metadata is not None:
            raise pickle.UnpicklingError("a storage view (written by PyTorch before 0.4)")
        if key not in self.storages:
            self.storages[key] = Storage(key, storage_type.dtype, size)
        return self.storages[key]


def read_storage_bytes(stream: io.BufferedReader, storage: Storage) -> None:
    header = stream.read(8)
    if len(header) != 8:
        raise ValueError("it ends before the data of all its tensors")
    (count,) = struct.unpack("<q", header)
    if count != storage.size or not 0 <= count <= MAX_ELEMENTS:
        raise ValueError(f"storage {storage.key} declares {count} elements where the pickle said {storage.size}")
    nbytes = count * storage.dtype.itemsize
    data = stream.read(nbytes)
    if len(data) != nbytes:
        raise ValueError("it ends before the data of all its tensors")
    storage.data = np.frombuffer(data, storage.dtype)


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """The tensors of the legacy-format PyTorch state dict at `path`, by name, as numpy arrays; raises
    WeightsFileError naming the file for anything else."""
    path = Path(path)
    try:
        with open(path, "rb") as stream:
            header = [StateDictUnpickler(stream).load() for _ in range(3)]
            if header[0] != LEGACY_MAGIC or header[1] != LEGACY_PROTOCOL:
                raise ValueError("it is not in PyTorch's legacy format (no magic number and protocol 1001)")
            if not (isinstance(header[2], dict) and header[2].get("little_endian") is True):
                raise ValueError("it was written on a big-endian machine or has no system header")
            unpickler = StateDictUnpickler(stream)
            state = unpickler.load()
            keys = StateDictUnpickler(stream).load()
            if not (isinstance(state, dict) and isinstance(keys, list) and sorted(keys) == sorted(unpickler.storages)):
                raise ValueError("it is not a state dict (a dict of tensors) with one data block per storage")
            for key in keys:
                read_storage_bytes(stream, unpickler.storages[key])
            if stream.read(1):
                raise ValueError("it has bytes after the data of its tensors")
            if not all(isinstance(name, str) and isinstance(tensor, TensorView) for name, tensor in state.items()):
                raise ValueError("its state dict holds something other than named tensors")
            return {name: tensor.array() for name, tensor in state.items()}
    except OSError as error:
        raise WeightsFileError(f"{path}: cannot read the weights file ({error.strerror or error}).") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, struct.error, AttributeError,
            IndexError, KeyError, MemoryError, RecursionError) as error:
        detail = str(error) or type(error).__name__
        raise WeightsFileError(f"{path}: not a usable PyTorch state dict: {detail}.") from None

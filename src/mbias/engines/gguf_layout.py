"""GGUF files: where things are in one (architecture, block count, each tensor's shape, type and
offset), and writing one so that no reader ever sees half of it.

gguf.GGUFReader turns each of gemma's 262k vocabulary entries into numpy views and takes about 8 s;
engines read the header at every load, so this scan skips the arrays and reads the same file in
milliseconds.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mbias.errors import MbiasError

DEFAULT_ALIGNMENT = 32  # GGUF's, when the file has no general.alignment


@dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]  # GGUF order: the input (row) dimension first
    type: int  # a gguf.GGMLQuantizationType value
    offset: int  # absolute, in bytes from the start of the file


@dataclass(frozen=True)
class GgufLayout:
    arch: str
    blocks: int
    tensors: dict[str, TensorInfo]


def read_layout(path: Path) -> GgufLayout:
    """The layout of the GGUF at ``path``; a one-line MbiasError for anything that is not one."""
    import mmap
    import struct

    import numpy as np
    from gguf import GGUF_MAGIC, GGUFReader, GGUFValueType

    sizes = {t: dtype(0).itemsize for t, dtype in GGUFReader.gguf_scalar_to_np.items()}
    try:
        with open(path, "rb") as file:
            head = file.read(24)
            if len(head) < 24 or struct.unpack_from("<I", head)[0] != GGUF_MAGIC:
                raise ValueError("not a GGUF file")
            data = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        with data:
            _, _, n_tensors, n_kv = struct.unpack_from("<IIQQ", data, 0)
            offset, values = 24, {}

            def text() -> str:
                nonlocal offset
                (length,) = struct.unpack_from("<Q", data, offset)
                offset += 8 + length
                return data[offset - length : offset].decode("utf-8", "replace")

            for _ in range(n_kv):
                key = text()
                (kind,) = struct.unpack_from("<I", data, offset)
                offset += 4
                if kind == GGUFValueType.ARRAY:
                    item, count = struct.unpack_from("<IQ", data, offset)
                    offset += 12
                    if item == GGUFValueType.STRING:
                        for _ in range(count):
                            text()
                    else:
                        offset += count * sizes[GGUFValueType(item)]
                elif kind == GGUFValueType.STRING:
                    values[key] = text()
                else:
                    dtype = GGUFReader.gguf_scalar_to_np[GGUFValueType(kind)]
                    values[key] = np.frombuffer(data, dtype=dtype, count=1, offset=offset)[0]
                    offset += sizes[GGUFValueType(kind)]
            relative = {}
            for _ in range(n_tensors):
                name = text()
                (dims,) = struct.unpack_from("<I", data, offset)
                shape = struct.unpack_from(f"<{dims}Q", data, offset + 4)
                kind, start = struct.unpack_from("<IQ", data, offset + 4 + 8 * dims)
                relative[name] = (shape, kind, start)
                offset += 4 + 8 * dims + 4 + 8
    except (OSError, ValueError, struct.error, KeyError) as exc:
        raise MbiasError(f"cannot read GGUF {path}: {exc}") from None
    arch = values.get("general.architecture")
    if arch is None:
        raise MbiasError(f"{path}: no general.architecture; not a llama.cpp model file")
    alignment = int(values.get("general.alignment", DEFAULT_ALIGNMENT))
    data_start = -(-offset // alignment) * alignment
    tensors = {name: TensorInfo(s, k, data_start + o) for name, (s, k, o) in relative.items()}
    return GgufLayout(arch, int(values.get(f"{arch}.block_count", 0)), tensors)


def write_atomically(writer: Any, output: Path) -> Path:
    """Write a ``gguf.GGUFWriter`` created without a path to ``output`` through a temporary file in
    the same folder, renamed into place: caches shared by concurrent processes stay whole."""
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, staging = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp")
    os.close(fd)
    try:
        writer.write_header_to_file(staging)
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.chmod(staging, 0o644)
        os.replace(staging, output)
    finally:
        Path(staging).unlink(missing_ok=True)
    return output

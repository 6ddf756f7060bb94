"""A fast draft of a tied output layer for llama.cpp, and the exact re-scoring of what it proposes.

gemma-3-270m's output layer (262,144 tokens x 640, tied to the token embedding, Q8_0 in the
packaged file) costs more per generated token than its 18 transformer blocks. llama.cpp multiplies
Q4_0 weights much faster, but Q4_0 logits move by up to ~4 and a Q4_0 embedding lost 2.6-4.3 points
of judged quality (docs/lab/results-log.md). So the engine loads a copy of the model with a separate Q4_0
``output.weight`` (the input embedding stays as it was) whose logits only *propose*: a row whose
leading draft token is far ahead of the next takes it; every other row re-scores a short list with
the model's own embedding rows against the final hidden state, in float32. The chosen token is the
original head's (computed without llama.cpp's 8-bit rounding of the hidden state) wherever the
draft errs by less than ``LEAD / 2``, which held at every step measured.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Any

from mbias.config import cache_dir
from mbias.engines.gguf_layout import read_layout, write_atomically

# Architectures whose llama.cpp graph takes an optional output.weight and applies nothing after it
# (gemma-2's final logit soft-capping would need re-scoring to follow); checked end to end in tests.
DRAFT_ARCHS = ("gemma3",)
EMBEDDING = "token_embd.weight"
OUTPUT = "output.weight"
BLOCK = 32  # Q4_0 quantises rows in blocks of 32 values
# Measured over 2,430 decoding steps (64 BABE texts, round-3 adapter): near the top the draft's
# logits were off by at most 3.2 (4.2 anywhere in the vocabulary), a draft leader was wrong only
# when it led by less than 1.3, and the exact winner was never below the draft's third place.
# Tokens within LEAD of the draft leader are re-scored: with draft errors under LEAD / 2 the exact
# winner is always among them.
LEAD = 6.5
CHUNK_ROWS = 16384  # rows quantised at a time while building (bounds the builder's memory)


def _embedding_types() -> set[int]:
    from gguf import GGMLQuantizationType as Q

    return {Q.F32, Q.F16, Q.BF16, Q.Q8_0}


def draftable(path: Path) -> bool:
    """Whether ``path`` is a model the draft head applies to: a known architecture, an output layer
    tied to a token embedding of a type the draft is built from, and rows a multiple of 32 long."""
    layout = read_layout(path)
    embedding = layout.tensors.get(EMBEDDING)
    return (
        layout.arch in DRAFT_ARCHS
        and OUTPUT not in layout.tensors
        and embedding is not None
        and embedding.type in _embedding_types()
        and embedding.shape[0] % BLOCK == 0
    )


def build_draft_gguf(base: Path, output: Path) -> Path:
    """Write ``base`` plus a Q4_0 ``output.weight`` made from its token embedding to ``output``."""
    import numpy as np
    from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
    from gguf.quants import dequantize, quantize

    reader = GGUFReader(base)
    arch = reader.fields["general.architecture"].contents()
    writer = GGUFWriter(None, arch)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue  # the writer adds these itself
        kind = field.types[0]
        sub_type = field.types[-1] if kind == GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), kind, sub_type=sub_type)
        if key == "general.alignment":
            writer.data_alignment = int(field.contents())
    embedding = None
    for tensor in reader.tensors:
        writer.add_tensor(tensor.name, tensor.data, raw_shape=tensor.data.shape, raw_dtype=tensor.tensor_type)
        if tensor.name == EMBEDDING:
            embedding = tensor
    assert embedding is not None  # draftable() was asked first
    rows = np.asarray(embedding.data)
    draft = np.concatenate(
        [
            quantize(dequantize(rows[i : i + CHUNK_ROWS], embedding.tensor_type), GGMLQuantizationType.Q4_0)
            for i in range(0, len(rows), CHUNK_ROWS)
        ]
    )
    writer.add_tensor(OUTPUT, draft, raw_shape=draft.shape, raw_dtype=GGMLQuantizationType.Q4_0)
    return write_atomically(writer, output)


def cached_draft_gguf(base: Path) -> Path | None:
    """The copy of ``base`` with a draft head, built once (about 15 s and 350 MB for gemma-3-270m)
    and cached; None where :func:`draftable` says no, or where the copy cannot be written (a full
    or read-only cache): the engine then runs the packaged output layer, slower but the same."""
    digest = hashlib.sha256(f"{base.resolve()}:{base.stat().st_size}:{base.stat().st_mtime_ns}".encode())
    target = cache_dir() / "gguf" / f"{base.stem}.draft-q4_0.{digest.hexdigest()[:12]}.gguf"
    if target.exists():  # only a draftable base ever gets one: no need to scan the base again
        return target
    if not draftable(base):
        return None
    try:
        return build_draft_gguf(base, target)
    except OSError as exc:
        warnings.warn(f"no draft output head ({exc}); using the packaged one", stacklevel=2)
        return None


def dequantize_rows(stored: Any, ids: Any, kind: int) -> Any:
    """Rows ``ids`` of a stored (quantised) matrix as float32."""
    import numpy as np
    from gguf.quants import dequantize

    return dequantize(np.asarray(stored[ids]), kind).astype(np.float32, copy=False)


class ExactHead:
    """The model's own output rows (the tied token embedding, read from the file as stored), used to
    re-score the draft's candidates. Only the rows asked for are read, so it adds little memory."""

    def __init__(self, path: Path):
        import numpy as np
        from gguf.quants import quant_shape_to_byte_shape

        info = read_layout(path).tensors[EMBEDDING]
        self._type = info.type
        width, vocab = info.shape
        row_bytes = quant_shape_to_byte_shape((width,), self._type)[0]
        self._rows = np.memmap(path, dtype=np.uint8, mode="r", offset=info.offset, shape=(vocab, row_bytes))

    def scores(self, hidden: Any, ids: Any) -> Any:
        """Logits of tokens ``ids`` (rows x k) for the final hidden states ``hidden`` (rows x width)."""
        import numpy as np

        weights = dequantize_rows(self._rows, ids.ravel(), self._type).reshape(*ids.shape, -1)
        return np.einsum("rkd,rd->rk", weights, hidden.astype(np.float32))

    def top_k(self, draft: Any, hidden: Any, k: int) -> tuple[Any, Any]:
        """The draft's k best tokens per row and their exact logits, best first."""
        import numpy as np

        ids = np.argpartition(draft, -k, axis=1)[:, -k:]
        scores = self.scores(hidden, ids)
        order = np.argsort(-scores, axis=1)
        return np.take_along_axis(ids, order, axis=1), np.take_along_axis(scores, order, axis=1)

    def greedy(self, draft: Any, hidden: Any) -> Any:
        """The exact head's argmax per row: the draft leader where nothing else comes within ``LEAD``
        of it, otherwise the best after re-scoring every token that does."""
        import numpy as np

        rows = np.arange(len(draft))
        best = draft.argmax(axis=1)
        leader = draft[rows, best].copy()
        draft[rows, best] = -np.inf  # for the runner-up; restored below (llama.cpp's buffer may be this)
        close = np.flatnonzero(leader - draft.max(axis=1) < LEAD)
        draft[rows, best] = leader
        if len(close):
            row, ids = np.nonzero(draft[close] >= (leader[close] - LEAD)[:, None])
            weights = dequantize_rows(self._rows, ids, self._type)
            scores = np.einsum("nd,nd->n", weights, hidden[close][row].astype(np.float32))
            order = np.lexsort((-scores, row))  # by row, best first within each
            first = np.unique(row[order], return_index=True)[1]
            best[close] = ids[order][first]
        return best

"""llama.cpp backend (optional extra: pip install 'mbias[llamacpp]'): the fast CPU engine.

The high-level ``llama_cpp.Llama`` decodes one sequence at a time, so this engine drives the
low-level batch API: every row (prompt x candidate) is its own sequence in one unified KV cache,
and each ``llama_decode`` advances all unfinished rows by one token; when a row finishes, a waiting
one starts in its place (continuous batching). The prompt prefix that rows
share (the MBIAS instruction, the few-shot block) is evaluated once in sequence 0 and its KV
cells are copied to the other rows; it also stays cached between calls, so the next batch only
evaluates what differs. LoRA adapters load beside the base as GGUF files
(:mod:`mbias.engines.gguf_export` converts PEFT adapters once and caches the result). For gemma-3
the output layer, the largest cost per token, runs as a fast draft whose proposals are re-scored
exactly (:mod:`mbias.engines.draft_head`).
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
import weakref
from collections import deque
from pathlib import Path
from typing import Any

from mbias.engines.draft_head import ExactHead, cached_draft_gguf
from mbias.engines.packaged import is_packaged, packaged_gguf
from mbias.errors import MbiasError
from mbias.profile import stage, tally
from mbias.prompts import STOP_STRINGS

# Sampling when candidates are asked for: the same nucleus the transformers engine uses.
TOP_K, TOP_P, DEFAULT_TEMPERATURE = 50, 0.95, 0.7


GGML_LOG_LEVEL_ERROR = 4
_errors: deque[str] = deque(maxlen=8)
_log_callback: Any = None  # ctypes must keep the callback alive as long as llama.cpp may call it


def _llama() -> Any:
    """The low-level bindings, with llama.cpp's log routed here: its loader chatter is dropped and
    its last errors are kept for the one-line MbiasError a failed load raises."""
    global _log_callback
    try:
        from llama_cpp import llama_cpp
    except ImportError:
        raise MbiasError(
            "the llamacpp engine needs llama-cpp-python: pip install 'mbias[llamacpp]'"
        ) from None
    if _log_callback is None:

        @llama_cpp.llama_log_callback
        def keep_errors(level: int, text: bytes, _: Any) -> None:
            if level == GGML_LOG_LEVEL_ERROR:
                _errors.append(text.decode("utf-8", "replace").strip())

        _log_callback = keep_errors
        llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))
    return llama_cpp


def _reason() -> str:
    """The first error llama.cpp logged since the last clear (the cause; later ones are its echoes)."""
    return f" ({_errors[0]})" if _errors else ""


def model_params(llama: Any) -> Any:
    """Model load settings: llama.cpp's defaults, without the AMX weight buffers where it has them.

    On Sapphire Rapids machines (AMX_INT8 in the build) llama.cpp repacks the Q4_K weights into AMX
    buffers and its first decode dies in ``ggml_backend_amx_mul_mat`` (ggml-org/llama.cpp#20824,
    closed unfixed): a segfault, not an error. The plain CPU buffers decode the same text.
    """
    params = llama.llama_model_default_params()
    if b"AMX_INT8 = 1" in llama.llama_print_system_info():
        params.use_extra_bufts = False
    return params


def idle_cores(window: float = 0.1) -> int:
    """Threads worth starting: the cores this process may use that are idle right now.

    llama.cpp's threads meet at a spinning barrier after every operation, so a thread that shares
    its core with other work stalls the rest. On a 2-core machine with one busy process, 1 thread
    decoded 58 tokens/s and 2 threads 24; idle, 2 threads doubled batched throughput. The idle
    share comes from /proc/stat over ``window`` seconds (all usable cores where it cannot be read).
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)

    def idle_and_total() -> tuple[int, int]:
        with open("/proc/stat") as stat:
            ticks = [int(x) for x in stat.readline().split()[1:9]]  # user nice system idle iowait ...
        return ticks[3] + ticks[4], sum(ticks)

    try:
        idle_before, total_before = idle_and_total()
        time.sleep(window)
        idle_after, total_after = idle_and_total()
    except (OSError, ValueError, IndexError):
        return cores
    share = (idle_after - idle_before) / max(1, total_after - total_before)
    return max(1, min(cores, round(share * (os.cpu_count() or cores))))


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens two token lists share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def cut_at_stop(text: str) -> tuple[str, bool]:
    """``text`` up to the first stop string, and whether there was one (the row is finished)."""
    cuts = [i for i in (text.find(s) for s in STOP_STRINGS) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


class LlamaTokenizer:
    """The GGUF's own tokenizer behind the small part of the transformers interface mbias uses
    (``tokenizer(text, add_special_tokens=...)["input_ids"]``, ``apply_chat_template``). The chat
    template is the GGUF's own, applied by llama.cpp (which recognises the common formats rather
    than running Jinja); models without one have ``chat_template = None``."""

    def __init__(self, llama: Any, vocab: Any, model: Any = None):
        self._llama, self._vocab = llama, vocab
        template = llama.llama_model_chat_template(model, None) if model is not None else None
        self.chat_template: str | None = template.decode("utf-8") if template else None

    def apply_chat_template(
        self, messages: list[dict[str, str]], tokenize: bool = False, add_generation_prompt: bool = True
    ) -> str:
        """The prompt for ``messages`` in the model's chat format (text only: ``tokenize`` must be False)."""
        if tokenize or not self.chat_template:
            raise MbiasError("llamacpp: apply_chat_template gives text, for a model with a chat template")
        llama = self._llama
        keep = [(m["role"].encode(), m["content"].encode()) for m in messages]  # alive during the call
        chat = (llama.llama_chat_message * len(keep))(*(llama.llama_chat_message(r, c) for r, c in keep))
        template, size = self.chat_template.encode(), 256 + sum(len(c) + 32 for _, c in keep)
        while True:
            buffer = ctypes.create_string_buffer(size)
            written = llama.llama_chat_apply_template(
                template, chat, len(keep), add_generation_prompt, buffer, size
            )
            if written < 0:
                raise MbiasError("llamacpp: llama.cpp does not know this model's chat template")
            if written <= size:
                return buffer.raw[:written].decode("utf-8")
            size = written

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        data = text.encode("utf-8")
        size = len(data) + 8
        while True:
            tokens = (self._llama.llama_token * size)()
            count = self._llama.llama_tokenize(
                self._vocab, data, len(data), tokens, size, add_special_tokens, True
            )
            if count >= 0:
                return list(tokens[:count])
            size = -count

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": self.encode(text, add_special_tokens)}


def _free(llama: Any, batch: Any, context: Any, model: Any) -> None:
    llama.llama_batch_free(batch)
    llama.llama_free(context)
    llama.llama_model_free(model)  # also frees the LoRA adapters loaded for it


class LlamaCppEngine:
    """Batched generation with llama.cpp; greedy unless a temperature or n > 1 asks to sample.

    ``n_ctx`` is the KV cache shared by all rows of one batch (prompt prefix once, then each row's
    own tokens and answer); ``max_rows`` rows decode together, and a waiting row takes the slot of
    the first one to finish (continuous batching);
    ``threads`` defaults to :func:`idle_cores`; ``seed`` makes sampled candidates repeatable;
    ``draft_head`` (default on where the model allows it) picks tokens through the draft head.
    """

    def __init__(
        self,
        source: str,
        lora: str | None = None,
        *,
        n_ctx: int = 8192,
        max_rows: int = 32,
        threads: int | None = None,
        seed: int = 0,
        draft_head: bool = True,
        **_: Any,
    ):
        import numpy as np

        llama = self._llama = _llama()
        path = packaged_gguf(source) if is_packaged(source) else Path(source)
        if not path.is_file():
            raise MbiasError(f"llamacpp: no GGUF model file at {source!r}")
        self.name = f"llamacpp:{source}" + (f"+lora:{lora}" if lora else "")
        draft = cached_draft_gguf(path) if draft_head else None
        _errors.clear()
        llama.llama_backend_init()
        weights = draft or path
        model = llama.llama_model_load_from_file(str(weights).encode(), model_params(llama))
        if not model:
            raise MbiasError(f"llama.cpp cannot load {weights}{_reason()}")
        params = llama.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch, params.n_seq_max = n_ctx, 512, 512, max_rows + 1
        params.n_threads = params.n_threads_batch = threads or idle_cores()
        params.kv_unified = True  # one cache: the shared prefix's cells serve every row
        params.no_perf = True
        params.pooling_type = llama.LLAMA_POOLING_TYPE_NONE  # per-token hidden states (draft head)
        context = llama.llama_init_from_model(model, params)
        if not context:
            llama.llama_model_free(model)
            raise MbiasError(f"llama.cpp cannot create a context of {n_ctx} tokens for {path}{_reason()}")
        self._batch = llama.llama_batch_init(params.n_batch, 0, 1)
        self._context, self._memory = context, llama.llama_get_memory(context)
        weakref.finalize(self, _free, llama, self._batch, context, model)
        if lora:
            self._load_lora(model, lora, path)
        self._exact = ExactHead(draft) if draft else None
        self._n_embd = llama.llama_model_n_embd(model)
        self._hidden: Any = None  # final hidden states of the last decode's output rows (draft head)
        self._embeddings_on = False
        self._vocab = llama.llama_model_get_vocab(model)
        self._n_vocab = llama.llama_vocab_n_tokens(self._vocab)
        self.tokenizer = LlamaTokenizer(llama, self._vocab, model)
        self.context_window = n_ctx
        self.n_ctx, self.max_rows, self.n_batch = n_ctx, max_rows, params.n_batch
        self.threads = params.n_threads
        self._rng = np.random.default_rng(seed)
        self._pieces: dict[int, bytes] = {}
        self._cached: list[int] = []  # the prefix whose KV cells sequence 0 still holds
        self._lock = threading.Lock()  # one context: one generate at a time (serve runs threads)

    def _load_lora(self, model: Any, lora: str, base: Path) -> None:
        """Attach a GGUF LoRA file, or a PEFT adapter directory converted to one (cached)."""
        from mbias.engines.gguf_export import cached_lora_gguf

        llama, source = self._llama, Path(lora)
        if source.is_dir():
            source = cached_lora_gguf(source, base)
        elif not source.is_file():
            raise MbiasError(f"llamacpp: no LoRA adapter at {lora!r} (a .gguf file or a PEFT directory)")
        _errors.clear()
        adapter = llama.llama_adapter_lora_init(model, str(source).encode())
        if not adapter:
            raise MbiasError(f"llama.cpp cannot apply LoRA {source} to {base}{_reason()}")
        adapters = (llama.llama_adapter_lora_p_ctypes * 1)(adapter)
        if llama.llama_set_adapters_lora(self._context, adapters, 1, (ctypes.c_float * 1)(1.0)) != 0:
            raise MbiasError(f"llama.cpp cannot attach LoRA {source}")

    # -- the Engine protocol -------------------------------------------------------------------
    def generate(
        self, prompts: list[str], *, max_new_tokens: int = 128, temperature: float = 0.0, n: int = 1
    ) -> list[list[str]]:
        sample = temperature > 0 or n > 1
        with stage("tokenize"):
            rows = [tokens for p in prompts for tokens in [self.tokenizer.encode(p)] * n]
        for row in rows:
            if len(row) + max_new_tokens > self.n_ctx:
                raise MbiasError(
                    f"prompt of {len(row)} tokens + {max_new_tokens} new ones exceeds the llamacpp "
                    f"context of {self.n_ctx} tokens"
                )
        with self._lock:
            texts = self._run(rows, max_new_tokens, (temperature or DEFAULT_TEMPERATURE) if sample else 0.0)
        return [texts[i * n : (i + 1) * n] for i in range(len(prompts))]

    # -- batching ------------------------------------------------------------------------------
    def _decode(self, entries: list[tuple[int, int, int, bool]]) -> Any:
        """Feed (token, position, sequence, wants logits) entries; the logits rows, in entry order.

        With the draft head the hidden states of those rows are kept too. llama.cpp outputs every
        token of a batch while embeddings are on, so the tokens that want nothing (a prompt's body)
        go first with them off; each sequence still receives its tokens in order.
        """
        if self._exact is None:
            return self._forward(entries)
        quiet, wanted = [e for e in entries if not e[3]], [e for e in entries if e[3]]
        if quiet:
            self._set_embeddings(False)
            self._forward(quiet)
        self._set_embeddings(True)
        return self._forward(wanted, keep_hidden=True)

    def _set_embeddings(self, on: bool) -> None:
        if on != self._embeddings_on:
            self._llama.llama_set_embeddings(self._context, on)
            self._embeddings_on = on

    def _forward(self, entries: list[tuple[int, int, int, bool]], keep_hidden: bool = False) -> Any:
        import numpy as np

        llama, batch, outputs, hidden = self._llama, self._batch, [], []
        for start in range(0, len(entries), self.n_batch):
            if outputs:
                outputs[-1] = outputs[-1].copy()  # the next decode overwrites llama.cpp's logits buffer
            chunk = entries[start : start + self.n_batch]
            for i, (token, pos, seq, logits) in enumerate(chunk):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
                batch.seq_id[i][0], batch.logits[i] = seq, logits
            batch.n_tokens = len(chunk)
            status = llama.llama_decode(self._context, batch)
            if status != 0:
                raise MbiasError(f"llama.cpp decode failed with status {status}{_reason()}")
            wanted = sum(1 for e in chunk if e[3])
            if wanted:
                pointer = llama.llama_get_logits(self._context)
                outputs.append(np.ctypeslib.as_array(pointer, shape=(wanted, self._n_vocab)))
                if keep_hidden:
                    pointer = llama.llama_get_embeddings(self._context)
                    hidden.append(np.ctypeslib.as_array(pointer, shape=(wanted, self._n_embd)).copy())
        if keep_hidden:
            self._hidden = np.concatenate(hidden) if hidden else None
        if len(outputs) == 1:
            return outputs[0]  # a view, valid until the next decode: callers use it before that
        return np.concatenate(outputs) if outputs else np.empty((0, self._n_vocab), dtype=np.float32)

    def _prepare_prefix(self, prefix: list[int]) -> None:
        """Make sequence 0 hold exactly ``prefix``, reusing what the last call left in the cache."""
        llama = self._llama
        keep = common_prefix(self._cached, prefix)
        llama.llama_memory_seq_rm(self._memory, -1, keep, -1)  # every row's cells past the reuse point
        if keep and llama.llama_memory_seq_pos_min(self._memory, 0) != 0:
            keep = 0  # a sliding-window layer dropped early cells: start from scratch
        if not keep:
            llama.llama_memory_clear(self._memory, True)
        self._cached = prefix[:keep]  # what the cache is sure to hold if the decode below fails
        self._decode([(t, keep + i, 0, False) for i, t in enumerate(prefix[keep:])])
        self._cached = prefix

    def _run(self, rows: list[list[int]], max_new_tokens: int, temperature: float) -> list[str]:
        """Continuous batching: up to ``max_rows`` rows decode together, and the moment one stops,
        the next waiting row takes its sequence slot in the same decode step, so the batch stays
        full instead of draining to its longest row. Sequence 0 holds the prefix every row shares
        (evaluated once, kept for the next call); a row starts from a copy of those cells. Rows of
        one prompt (``n`` samples) evaluate it once: a sibling starts from a copy of the cells of
        one already running and evaluates only its last token (best of five on mbias-1.5b spent
        78 % of its time evaluating each prompt five times). A row reserves the cells its prompt
        and answer may need, so the cache never overflows."""
        shared = min(len(r) for r in rows) - 1  # every row keeps >= 1 own token to get logits from
        for row in rows[1:]:
            shared = min(shared, common_prefix(rows[0], row))
        tally("prompt tokens", sum(len(r) for r in rows))
        tally("prompt tokens evaluated", shared - common_prefix(self._cached, rows[0][:shared]))
        with stage("prefill"):
            self._prepare_prefix(rows[0][:shared])
        llama, memory = self._llama, self._memory
        waiting = deque(range(len(rows)))
        free = list(range(self.max_rows, 0, -1))  # sequence ids 1..max_rows; 0 is the prefix
        row_of: dict[int, int] = {}  # slot -> row
        reserved = {i: len(r) - shared + max_new_tokens for i, r in enumerate(rows)}
        room = self.n_ctx - shared
        positions = [len(r) for r in rows]
        first_of: dict[tuple[int, ...], int] = {}
        group = [first_of.setdefault(tuple(r), i) for i, r in enumerate(rows)]  # rows of one prompt
        holders: dict[int, set[int]] = {}  # group -> running slots whose prompt cells are decoded
        starting_groups: set[int] = set()  # groups whose first row is in this step's feed
        picked = [0] * len(rows)
        generated: list[bytes] = [b""] * len(rows)
        texts = [""] * len(rows)
        feed: list[tuple[int, int, int, bool]] = []

        def finish(slot: int) -> None:
            nonlocal room
            row = row_of.pop(slot)
            room += reserved[row]
            holders.get(group[row], set()).discard(slot)
            llama.llama_memory_seq_rm(memory, slot, -1, -1)
            free.append(slot)

        def donor(row: int) -> int | None:
            """A running sibling whose prompt cells can be copied: all of them still there (a
            sliding-window layer may have dropped early ones once a row ran long)."""
            for slot in holders.get(group[row], ()):
                if llama.llama_memory_seq_pos_min(memory, slot) == 0:
                    return slot
            return None

        while True:
            starting = 0
            starting_groups.clear()
            deferred = []  # siblings of a row starting now: its prompt cells exist after this step
            while waiting and free and reserved[waiting[0]] <= room:
                row = waiting.popleft()
                if group[row] in starting_groups:
                    deferred.append(row)
                    continue
                slot = free.pop()
                row_of[slot], room = row, room - reserved[row]
                llama.llama_memory_seq_rm(memory, slot, -1, -1)  # nothing left from a failed call
                source = donor(row)
                if source is None:
                    llama.llama_memory_seq_cp(memory, 0, slot, -1, -1)
                    begin = shared
                    starting_groups.add(group[row])
                else:
                    begin = len(rows[row]) - 1
                    llama.llama_memory_seq_cp(memory, source, slot, -1, begin)
                own = rows[row][begin:]
                feed += [(token, begin + i, slot, i == len(own) - 1) for i, token in enumerate(own)]
                starting += len(own)
                holders.setdefault(group[row], set()).add(slot)
            waiting.extendleft(reversed(deferred))
            if not feed:
                break
            tally("prompt tokens evaluated", starting)
            with stage("prefill" if starting else "decode"):
                logits = self._decode(feed)
                tokens = self._pick(logits, temperature).tolist()
            tally("new tokens", len(tokens))
            slots, feed = [slot for _, _, slot, wanted in feed if wanted], []
            for slot, token in zip(slots, tokens):
                row = row_of[slot]
                picked[row] += 1
                if llama.llama_vocab_is_eog(self._vocab, token):
                    finish(slot)
                    continue
                generated[row] += self._piece(token)
                texts[row], stopped = cut_at_stop(generated[row].decode("utf-8", "replace"))
                if stopped or picked[row] >= max_new_tokens:
                    finish(slot)
                    continue
                feed.append((token, positions[row], slot, True))
                positions[row] += 1
        return texts

    def _pick(self, logits: Any, temperature: float) -> Any:
        """Next token per row: argmax, or a draw from the top-k / top-p nucleus at ``temperature``."""
        import numpy as np

        exact = self._exact
        if temperature <= 0:
            return exact.greedy(logits, self._hidden) if exact else logits.argmax(axis=1)
        if exact:
            top, scores = exact.top_k(logits, self._hidden, TOP_K)
        else:
            top = np.argpartition(logits, -TOP_K, axis=1)[:, -TOP_K:]
            scores = np.take_along_axis(logits, top, axis=1)
            order = np.argsort(-scores, axis=1)
            top, scores = np.take_along_axis(top, order, axis=1), np.take_along_axis(scores, order, axis=1)
        scores = scores / temperature
        probs = np.exp(scores - scores[:, :1])
        probs /= probs.sum(axis=1, keepdims=True)
        probs[np.cumsum(probs, axis=1) - probs >= TOP_P] = 0.0  # outside the nucleus (never the top 1)
        cumulative = np.cumsum(probs, axis=1)
        draws = self._rng.random((len(probs), 1)) * cumulative[:, -1:]
        return top[np.arange(len(top)), (cumulative < draws).sum(axis=1)]

    def _piece(self, token: int) -> bytes:
        """A token's bytes (control tokens render as nothing, like skip_special_tokens)."""
        piece = self._pieces.get(token)
        if piece is None:
            buffer = ctypes.create_string_buffer(64)
            size = self._llama.llama_token_to_piece(self._vocab, token, buffer, 64, 0, False)
            if size < 0:
                buffer = ctypes.create_string_buffer(-size)
                size = self._llama.llama_token_to_piece(self._vocab, token, buffer, -size, 0, False)
            piece = self._pieces[token] = buffer.raw[:size]
        return piece

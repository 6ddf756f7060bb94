"""The streaming guard: an upstream's tokens pass through as Server-Sent Events, a sentence at a time.

Only the sentence in progress is held back. Each time the upstream's text holds a sentence that a
later one has begun after (and no code fence is open), everything before that last sentence goes
through the Debiaser as one piece (the same sentence path as a whole answer) and leaves, rewritten
where the judge flagged it. The upstream is read ahead while a piece is checked, so what arrived
meanwhile is checked in one call: a fast upstream costs a few judge calls, not one per sentence.
The stream ends with a chunk whose ``mbias`` field carries the action and the spans, offsets
counted in the whole answer, as a non-streamed answer's does.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from mbias.errors import MbiasError
from mbias.records import Record, repair_unicode
from mbias.segment import split_sentences

FENCE = "```"


QUEUE_CHUNKS = 4096  # upstream chunks read ahead while a piece is being checked
_END = object()


# Delta fields that pass through beside the checked text; others (reasoning, refusal) are text
# the guard does not check, so they do not leave.
PASSED_DELTA = ("role", "tool_calls", "function_call")


class _UpstreamFailed(MbiasError):
    """What the upstream's stream raised, told apart from the guard's own failures."""


async def _pump(chunks: AsyncIterator[dict[str, Any]], queue: asyncio.Queue[Any]) -> None:
    """Read the upstream into ``queue`` while the guard checks; an error goes in as an item."""
    try:
        async for item in chunks:
            await queue.put(repair_unicode(item))
    except Exception as exc:  # handed to the consumer, which reports it in the stream
        await queue.put(_UpstreamFailed(str(exc) if isinstance(exc, MbiasError) else repr(exc)))
    await queue.put(_END)


def ready_prefix(text: str) -> int:
    """How much of ``text`` can be checked now: up to the start of its last sentence (which may
    still grow), and nothing while a code fence is open."""
    sentences = split_sentences(text)
    if len(sentences) < 2:
        return 0
    cut = sentences[-1].start
    return cut if text[:cut].count(FENCE) % 2 == 0 else 0


def sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n".encode()


async def guarded_stream(
    chunks: AsyncIterator[dict[str, Any]],
    check: Callable[[str], Awaitable[Record]],
    policy: Callable[[Record], str],
    on_flagged: str,
) -> AsyncIterator[bytes]:
    """SSE bytes of the guarded answer. ``check`` runs one piece of text through the Debiaser,
    ``policy`` turns its record into the text that leaves."""
    pending, offset, out_offset = "", 0, 0
    spans: list[dict[str, Any]] = []
    actions: list[str] = []
    template: dict[str, Any] = {"object": "chat.completion.chunk", "created": int(time.time())}

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        return sse({**template, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra})

    async def release(piece: str) -> tuple[bytes, bool]:
        nonlocal offset, out_offset
        if not piece.strip():  # nothing to check: whitespace leaves as it came
            offset, out_offset = offset + len(piece), out_offset + len(piece)
            return chunk({"content": piece}), False
        record = await check(piece)
        text = policy(record)
        stop = record["action"] == "flagged" and on_flagged == "block"
        if stop:  # what came before the first flagged sentence has been cleared: it leaves first
            flagged = [s["output_start"] for s in record.get("spans", []) if s["action"] == "flagged"]
            text = record["rewrite"][: min(flagged, default=0)] + text
        actions.append(record["action"])
        for span in record.get("spans", []):
            spans.append(
                {
                    **span,
                    "start": span["start"] + offset,
                    "end": span["end"] + offset,
                    "output_start": span["output_start"] + out_offset,
                    "output_end": span["output_end"] + out_offset,
                }
            )
        offset += len(piece)
        out_offset += len(text)
        return chunk({"content": text}), stop

    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=QUEUE_CHUNKS)
    reader = asyncio.create_task(_pump(chunks, queue))
    finish: str | None = None  # the upstream's own finish reason ("length", "tool_calls", ...)
    role_sent, blocked = False, False
    usage: Any = None
    failure: dict[str, Any] | None = None
    try:
        finished = False
        while not finished:
            # take every chunk that has arrived, so sentences that came in during the last check
            # are checked together: one judge call, not one per sentence
            arrived = [await queue.get()]
            while not queue.empty():
                arrived.append(queue.get_nowait())
            stop = False
            for item in arrived:
                if item is _END:
                    finished = True
                    break
                if isinstance(item, BaseException):
                    raise item
                template.update({k: item[k] for k in ("id", "model") if k in item})
                usage = item.get("usage") or usage
                choice = (item.get("choices") or [{}])[0]
                finish = choice.get("finish_reason") or finish
                delta = choice.get("delta") or {}
                pending += delta.get("content") or ""
                other = {k: delta[k] for k in PASSED_DELTA if delta.get(k) is not None}
                if other.get("role") and role_sent:
                    other.pop("role")  # some servers repeat it in every chunk: it leaves once
                role_sent = role_sent or bool(other.get("role"))
                if pending and set(other) - {"role"}:  # a tool call: the text before it is finished
                    event, stop = await release(pending)
                    pending = ""
                    yield event
                    if stop:
                        break
                if other:
                    yield chunk(other)
            if stop:
                blocked = True
                break
            cut = ready_prefix(pending)
            if cut:
                event, stop = await release(pending[:cut])
                pending = pending[cut:]
                yield event
                if stop:
                    pending, blocked = "", True
                    break
        if pending:
            event, _ = await release(pending)
            yield event
    except Exception as exc:  # reported in the stream: the client already has a 200 and earlier text
        upstream = isinstance(exc, _UpstreamFailed)
        if upstream and pending:  # what the upstream sent before failing is checked and kept
            try:
                event, _ = await release(pending)
                yield event
            except Exception:  # the guard cannot check it either: it does not leave unchecked
                pass
        message = str(exc) if isinstance(exc, MbiasError) else f"{type(exc).__name__}: {exc}"
        failure = {"message": message, "type": "upstream_error" if upstream else "guard_error"}
    finally:
        reader.cancel()
    action = "flagged" if "flagged" in actions else "rewritten" if "rewritten" in actions else "kept"
    report = {"action": action, "spans": spans, "policy": on_flagged}
    if failure:  # no finish chunk: the answer did not finish
        yield sse({"error": failure, "mbias": report})
    else:
        reason = "content_filter" if blocked else finish or "stop"  # a blocked answer calls no tool
        yield chunk({}, reason, mbias=report, **({"usage": usage} if usage else {}))
    yield sse("[DONE]")

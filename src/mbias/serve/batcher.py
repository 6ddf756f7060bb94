"""Micro-batching: concurrent HTTP requests share one model call.

A CPU or GPU model is far faster on a batch than on texts one at a time (docs/lab/results-log.md), so
requests arriving within a few milliseconds of each other are merged, run through the Debiaser on
one worker thread (the model is never called concurrently), and answered individually.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from mbias.errors import MbiasError
from mbias.intervene import Debiaser
from mbias.records import Record


class Overloaded(MbiasError):
    """More texts are waiting than ``max_queue`` allows: the caller should come back later."""


class MicroBatcher:
    def __init__(
        self,
        debiaser: Debiaser,
        max_batch: int = 16,
        max_wait_ms: float = 10.0,
        max_queue: int = 0,
        on_batch: Callable[[int], None] | None = None,
    ):
        self.debiaser = debiaser
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        # texts waiting or in the model; past max_queue (0: no bound) a request is refused at once,
        # so a burst cannot grow memory and latency without limit
        self.max_queue = max_queue
        self.pending = 0
        self.on_batch = on_batch
        self.queue: asyncio.Queue[tuple[Record, asyncio.Future]] = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mbias-model")
        self.worker: asyncio.Task | None = None
        self.batches_run = 0

    async def start(self) -> None:
        self.worker = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self.worker:
            self.worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.worker
        self.executor.shutdown(wait=False)

    async def submit(self, records: list[Record]) -> list[Record]:
        if self.max_queue and self.pending + len(records) > self.max_queue:
            raise Overloaded(
                f"{self.pending} texts are waiting (--max-queue {self.max_queue}); retry shortly"
            )
        loop = asyncio.get_running_loop()
        futures = []
        self.pending += len(records)
        try:
            for record in records:
                future = loop.create_future()
                futures.append(future)
                await self.queue.put((record, future))
            return list(await asyncio.gather(*futures))
        finally:
            self.pending -= len(records)

    async def _collect(self) -> list[tuple[Record, asyncio.Future]]:
        items = [await self.queue.get()]
        deadline = asyncio.get_running_loop().time() + self.max_wait
        while len(items) < self.max_batch:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            try:
                items.append(await asyncio.wait_for(self.queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return items

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [item for item in await self._collect() if not item[1].done()]
            if not items:
                continue  # every caller gave up (deadline passed, client gone): no model time spent
            records = [record for record, _ in items]
            try:
                results = await loop.run_in_executor(self.executor, self.debiaser.process_batch, records)
            except Exception as exc:  # one bad batch must not kill the service
                for _, future in items:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.batches_run += 1
            if self.on_batch:
                self.on_batch(len(records))
            for (_, future), result in zip(items, results):
                if not future.done():
                    future.set_result(result)

"""Load on the HTTP service and the guard, on loopback only, against a stand-in upstream LLM.

    python benchmarks/serve_load.py --clients 8 --seconds 20

Prints, from one run with the shipped model and judge:
- the latency the guard adds to a clean ~200-token answer, non-streamed and streamed (p50, p99),
  against asking the stand-in upstream directly;
- /v1/debias throughput with N concurrent clients for M seconds, micro-batching (max batch 16)
  against batch size 1, and p50/p99 latency of each;
- an overload burst against a small --max-queue: how many 200s and 503s, and the process's
  resident memory before and after.
Every request goes to 127.0.0.1; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import time

import httpx

CLEAN_ANSWER = (
    "Here is a plan for a calm and productive week. Start each morning by listing the three tasks that "
    "matter most, and do the hardest one first while your focus is fresh. Block an hour after lunch for "
    "email so messages do not interrupt deeper work. Review the team board on Wednesday and move any "
    "stalled ticket to whoever can unblock it. Keep meetings to thirty minutes with a written agenda, and "
    "end each with a clear owner for every action. On Friday, write a short note on what shipped, what "
    "slipped and why, and plan the first task for Monday. Finally, take real breaks: a short walk between "
    "long sessions helps you think more clearly and keeps the week sustainable."
)
SHORT_TEXTS = [
    "Old people are useless with computers, don't bother teaching them.",
    "Women are too emotional to run a company.",
    "The library is open until eight on weekdays.",
    "Immigrants are ruining this town.",
    "The new bus route starts on Monday.",
    "Those lazy idiots at the council closed the pool again.",
]


# The answer as an LLM streams it: each word with its leading space, and when each left the upstream.
WORDS = [w if i == 0 else " " + w for i, w in enumerate(CLEAN_ANSWER.split(" "))]
SENT: list[float] = []


async def release_delays(url: str, pace: float) -> list[float]:
    """For each piece the streaming guard releases: seconds from the moment the upstream sent the
    last word that piece completes to the moment the client has the piece."""
    ends = [sum(len(w) for w in WORDS[: i + 1]) for i in range(len(WORDS))]
    payload = {"messages": [{"role": "user", "content": "plan my week"}], "stream": True, "pace": pace}
    delays, received = [], 0
    async with httpx.AsyncClient(timeout=60) as client, client.stream("POST", url, json=payload) as response:
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            delta = json.loads(line[6:])["choices"][0]["delta"].get("content")
            if not delta:
                continue
            now, received = time.perf_counter(), received + len(delta)
            last = max((i for i, end in enumerate(ends) if end <= received), default=0)
            delays.append(now - SENT[last])
    return delays


def upstream_app():
    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse

    app = FastAPI()

    @app.get("/v1/models")
    def models():
        return {"data": [{"id": "stand-in"}]}

    @app.post("/v1/chat/completions")
    async def chat(body: dict):
        if body.get("stream"):
            pace = float(body.get("pace", 0))  # seconds between tokens, as a real LLM streams them

            async def events():
                SENT.clear()
                for word in WORDS:
                    if pace:
                        await asyncio.sleep(pace)
                    chunk = {"choices": [{"index": 0, "delta": {"content": word}}]}
                    SENT.append(time.perf_counter())
                    yield f"data: {json.dumps(chunk)}\n\n"
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")
        return {"choices": [{"index": 0, "message": {"role": "assistant", "content": CLEAN_ANSWER}}]}

    return app


def percentiles(values: list[float]) -> str:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return f"p50 {1000 * statistics.median(ordered):.1f} ms, p99 {1000 * p99:.1f} ms (n {len(ordered)})"


async def timed_posts(url: str, payload: dict, count: int, stream: bool = False) -> list[float]:
    times = []
    async with httpx.AsyncClient(timeout=60) as client:
        for _ in range(count):
            start = time.perf_counter()
            if stream:
                async with client.stream("POST", url, json=payload) as response:
                    async for _ in response.aiter_lines():
                        pass
            else:
                (await client.post(url, json=payload)).raise_for_status()
            times.append(time.perf_counter() - start)
    return times


async def load(url: str, clients: int, seconds: float) -> tuple[int, list[float]]:
    """``clients`` concurrent loops posting short texts for ``seconds``; texts done and latencies."""
    deadline = time.perf_counter() + seconds
    latencies: list[float] = []

    async def one(client: httpx.AsyncClient, k: int) -> None:
        i = k
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            response = await client.post(url, json={"text": f"{SHORT_TEXTS[i % len(SHORT_TEXTS)]} ({i})"})
            response.raise_for_status()
            latencies.append(time.perf_counter() - start)
            i += clients

    async with httpx.AsyncClient(timeout=120) as client:
        await asyncio.gather(*(one(client, k) for k in range(clients)))
    return len(latencies), latencies


async def burst(url: str, count: int) -> dict[int, int]:
    async with httpx.AsyncClient(timeout=120) as client:
        responses = await asyncio.gather(
            *(client.post(url, json={"text": f"{SHORT_TEXTS[i % 6]} ({i})"}) for i in range(count))
        )
    statuses: dict[int, int] = {}
    for response in responses:
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
    return statuses


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--requests", type=int, default=30, help="requests per latency measurement")
    parser.add_argument("--burst", type=int, default=200)
    args = parser.parse_args()

    from mbias.engines import load_engine
    from mbias.intervene import Debiaser
    from mbias.serve.app import create_app
    from mbias.serve.background import serve_in_thread

    debiaser = Debiaser()
    with serve_in_thread(upstream_app()) as upstream_url:
        upstream = load_engine(f"openai:{upstream_url}/v1#stand-in")
        guard = create_app(debiaser, upstream=upstream)
        with serve_in_thread(guard) as guard_url:
            body = {"messages": [{"role": "user", "content": "plan my week"}]}
            for stream in (False, True):
                payload = {**body, "stream": stream}
                direct = asyncio.run(
                    timed_posts(f"{upstream_url}/v1/chat/completions", payload, args.requests, stream)
                )
                guarded = asyncio.run(
                    timed_posts(f"{guard_url}/v1/chat/completions", payload, args.requests, stream)
                )
                added = [g - statistics.median(direct) for g in guarded]
                label = "streamed" if stream else "whole"
                words = len(CLEAN_ANSWER.split())
                print(f"guard on a clean {words}-word answer ({label}): added {percentiles(added)}")
            pace = 0.02
            chat = f"{guard_url}/v1/chat/completions"
            delays = [d for _ in range(5) for d in asyncio.run(release_delays(chat, pace))]
            print(
                f"streaming, upstream at one token per {1000 * pace:.0f} ms: a clean sentence leaves the "
                f"guard {percentiles(delays)} after its last token left the upstream"
            )
        for max_batch in (16, 1):
            with serve_in_thread(create_app(debiaser, max_batch=max_batch, max_wait_ms=10)) as api:
                done, latencies = asyncio.run(load(f"{api}/v1/debias", args.clients, args.seconds))
                print(
                    f"/v1/debias, {args.clients} clients, max batch {max_batch:>2}: "
                    f"{done / args.seconds:.2f} texts/s, {percentiles(latencies)}"
                )
        before = rss_mib()
        with serve_in_thread(create_app(debiaser, max_batch=16, max_queue=32)) as api:
            statuses = asyncio.run(burst(f"{api}/v1/debias", args.burst))
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"burst of {args.burst} against --max-queue 32: {statuses}; "
            f"RSS {before:.0f} -> {rss_mib():.0f} MiB (peak {peak:.0f})"
        )


if __name__ == "__main__":
    main()

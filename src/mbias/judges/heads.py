"""Classifier heads on frozen sentence embeddings, stored as plain arrays.

The heads are evaluated with numpy only (no sklearn at inference), so loading the judge costs one
small file read and the math is easy to test. A head is a stack of affine layers: ReLU between
them, a sigmoid at the end (a softmax over ``labels`` for the category head). Logistic regression
is the one-layer case; an input scaler fitted at training time is folded into the first layer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mbias.errors import MbiasError

WEIGHTS_FILE = "heads.npz"


@dataclass
class Head:
    """One binary classifier: layers of (weight [in, out], bias [out]) and a decision threshold."""

    layers: list[tuple[np.ndarray, np.ndarray]]
    threshold: float = 0.5
    kind: str = "logreg"
    labels: list[str] | None = None  # a softmax head's classes, in output order

    def logits(self, embeddings: np.ndarray) -> np.ndarray:
        hidden = np.asarray(embeddings, dtype=np.float32)
        for index, (weight, bias) in enumerate(self.layers):
            hidden = hidden @ weight + bias
            if index < len(self.layers) - 1:
                hidden = np.maximum(hidden, 0.0)
        return hidden.reshape(-1)

    def predict_proba(self, embeddings: np.ndarray) -> np.ndarray:
        """Probability of the positive class (toxic / biased) per row."""
        z = np.clip(self.logits(embeddings), -60.0, 60.0)
        return 1.0 / (1.0 + np.exp(-z))

    def class_logits(self, embeddings: np.ndarray) -> np.ndarray:
        """A softmax head's logits, one column per class (its one layer, no ReLU)."""
        weight, bias = self.layers[0]
        return np.asarray(embeddings, dtype=np.float32) @ weight + bias

    def predict_index(self, embeddings: np.ndarray) -> np.ndarray:
        """A softmax head's most likely class per row (argmax of its logits)."""
        return np.argmax(self.class_logits(embeddings), axis=1)

    def top_probability(self, embeddings: np.ndarray) -> np.ndarray:
        """A softmax head's probability of its most likely class per row: how clearly a text is
        one of its classes rather than none of them."""
        logits = self.class_logits(embeddings)
        logits -= logits.max(axis=1, keepdims=True)
        odds = np.exp(logits)
        return odds.max(axis=1) / odds.sum(axis=1)

    def predict_labels(self, embeddings: np.ndarray) -> list[str]:
        return [self.labels[i] for i in self.predict_index(embeddings)] if self.labels else []


@dataclass
class HeadSet:
    """The shipped heads plus what was measured when they were made (kept next to the weights)."""

    heads: dict[str, Head]
    encoder: str
    metadata: dict[str, Any] = field(default_factory=dict)
    category: Head | None = None  # which harm a flagged text does (mbias.judges.categories)
    # the LoRA adapter directory the heads' vectors came through (beside heads.json), None = frozen
    adapter: Path | None = None
    # what a blind reader says of a rewrite, read from (source, candidate) pairs (mbias.judges.readers)
    readers: dict[str, Head] = field(default_factory=dict)

    def save(self, directory: Path) -> Path:
        """Write ``heads.json`` (thresholds, metadata, metrics) and ``heads.npz`` (weights)."""
        directory.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {}
        described = {}
        named = {
            **self.heads,
            **({"category": self.category} if self.category else {}),
            **{f"readers.{n}": head for n, head in self.readers.items()},
        }
        for name, head in named.items():
            for index, (weight, bias) in enumerate(head.layers):
                arrays[f"{name}.W{index}"] = weight.astype(np.float32)
                arrays[f"{name}.b{index}"] = bias.astype(np.float32)
            described[name] = {"kind": head.kind, "n_layers": len(head.layers), "threshold": head.threshold}
            if head.labels:
                described[name]["labels"] = head.labels
        if self.category:  # its threshold gates the screen's suspects (older files: unused, 0.5)
            described["category"]["gates_suspects"] = True
        np.savez_compressed(directory / WEIGHTS_FILE, **arrays)
        category = {"category": described.pop("category")} if self.category else {}
        readers = {n: described.pop(f"readers.{n}") for n in self.readers}
        document = {
            "encoder": self.encoder,
            **({"encoder_adapter": self.adapter.name} if self.adapter else {}),
            "weights": WEIGHTS_FILE,
            "heads": described,
            **category,
            **({"readers": readers} if readers else {}),
            **self.metadata,
        }
        path = directory / "heads.json"
        path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: Path) -> HeadSet:
        if not path.exists():
            raise MbiasError(f"{path}: no judge heads found; run 'mbias train-judges' first")
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            weights = np.load(path.parent / document.get("weights", WEIGHTS_FILE))
            named = {
                **document["heads"],
                **({"category": document["category"]} if "category" in document else {}),
                **{f"readers.{n}": spec for n, spec in document.get("readers", {}).items()},
            }
            heads = {}
            for name, spec in named.items():
                layers = [
                    (weights[f"{name}.W{i}"], weights[f"{name}.b{i}"]) for i in range(int(spec["n_layers"]))
                ]
                # a category head saved before its threshold gated suspects gates none
                gates = name != "category" or spec.get("gates_suspects", False)
                heads[name] = Head(
                    layers=layers,
                    threshold=float(spec["threshold"]) if gates else 0.0,
                    kind=spec["kind"],
                    labels=spec.get("labels"),
                )
        except (OSError, KeyError, ValueError) as exc:
            raise MbiasError(f"{path}: unreadable judge heads ({exc}); re-run 'mbias train-judges'") from None
        own = ("encoder", "encoder_adapter", "weights", "heads", "category", "readers")
        metadata = {k: v for k, v in document.items() if k not in own}
        category = heads.pop("category", None)
        readers = {n: heads.pop(f"readers.{n}") for n in document.get("readers", {})}
        adapter = path.parent / document["encoder_adapter"] if document.get("encoder_adapter") else None
        if adapter is not None and not adapter.is_dir():
            raise MbiasError(f"{path}: its encoder adapter {adapter} is missing; re-run 'mbias train-judges'")
        return cls(
            heads=heads,
            encoder=document["encoder"],
            metadata=metadata,
            category=category,
            adapter=adapter,
            readers=readers,
        )

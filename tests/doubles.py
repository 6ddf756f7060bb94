"""Test doubles for the Debiaser: a scripted engine and a word-list judge, so the path's logic
(screen, choose, splice) is what a test exercises, not a model."""

from __future__ import annotations

from mbias.judges import head_margin


class ScriptedEngine:
    """Returns fixed completions: the choose step is what is under test, not a model."""

    name = "scripted"
    tokenizer = None
    context_window = 100

    def __init__(self, outputs):
        self.outputs = outputs
        self.calls = []

    def generate(self, prompts, *, max_new_tokens=128, temperature=0.0, n=1):
        """The first output is the greedy one; a sampling call (temperature > 0) gets the ones after
        it, as the Debiaser asks for samples beside the greedy rewrite."""
        self.calls.append(prompts)
        start = 1 if temperature > 0 and len(self.outputs) > n else 0
        return [self.outputs[start : start + n] for _ in prompts]


class FixedJudge:
    def __init__(self, unsafe_words=("idiot",)):
        self.unsafe_words = unsafe_words

    def score(self, texts):
        return [{"toxicity": float(any(w in t for w in self.unsafe_words)), "bias": 0.0} for t in texts]

    def similarity(self, sources, outputs):
        return [
            len(set(s.split()) & set(o.split())) / max(1, len(set(s.split())))
            for s, o in zip(sources, outputs)
        ]

    def categorise(self, texts):
        return ["insult or profanity" if any(w in t for w in self.unsafe_words) else None for t in texts]

    def is_unsafe(self, scores, margin=1.0):
        return scores["toxicity"] >= 0.5 * head_margin(margin, "toxicity")

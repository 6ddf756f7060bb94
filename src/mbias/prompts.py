"""Every prompt the project sends to a model, and the clean-up of what comes back.

Training (`mbias train`), rewriting (`mbias debias`) and annotation (`mbias annotate`) all render
prompts here, so the model sees at inference exactly the format it was trained on.
"""

from __future__ import annotations

import re
from typing import Any

INSTRUCTION = (
    "You are a text debiasing bot, you take as input a text and you output its debiased version by "
    "rephrasing it to be free from any age, gender, political, social or socio-economic biases, "
    "without any extra outputs. Debias this text by rephrasing it to be free of bias:"
)

STYLES = ("mbias", "fewshot", "mistral-inst", "chat", "auto")

# Worked examples written by the project (docs/ANNOTATION.md style); none comes from a test set.
FEWSHOT_EXAMPLES: tuple[tuple[str, str], ...] = (
    (
        "Old people are useless with computers, so don't bother training them.",
        "Some people need more time to learn computers, so plan the training accordingly.",
    ),
    (
        "This stupid idiot of a manager screwed up the schedule again.",
        "The manager made a mistake with the schedule again.",
    ),
    (
        "Women are too emotional to run a company.",
        "Running a company well takes emotional control, whoever the leader is.",
    ),
    ("The library is open until eight on weekdays.", "The library is open until eight on weekdays."),
)


def _mbias_turn(text: str) -> str:
    return f"{INSTRUCTION}\nText: {text}\nDebiased text:"


def render(text: str, style: str, tokenizer: Any | None = None) -> str:
    """The prompt for one input text in the given style.

    - ``mbias``: the plain format the project's adapters are trained on; the answer follows it.
    - ``fewshot``: ``mbias`` preceded by worked examples, for base models without an adapter.
    - ``mistral-inst``: the ``[INST]`` format of Mistral-Instruct and the paper's MBIAS model.
    - ``chat``: the tokenizer's chat template with one user turn (or the bare turn for HTTP chat
      engines, which apply their own template server-side).
    - ``auto``: ``chat`` when the tokenizer has a template, ``mbias`` otherwise.
    """
    if style == "auto":
        has_template = tokenizer is None or getattr(tokenizer, "chat_template", None)
        style = "chat" if has_template else "mbias"
    if style == "mbias":
        return _mbias_turn(text)
    if style == "fewshot":
        shots = "\n\n".join(f"{_mbias_turn(src)} {tgt}" for src, tgt in FEWSHOT_EXAMPLES)
        return f"{shots}\n\n{_mbias_turn(text)}"
    if style == "mistral-inst":
        return f"[INST] {INSTRUCTION} {text} [/INST]"
    if style == "chat":
        content = f"{INSTRUCTION}\n\n{text}"
        if tokenizer is not None and getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template(
                [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
            )
        return content
    raise ValueError(f"unknown prompt style {style!r}; choose one of {', '.join(STYLES)}")


def training_text(source: str, target: str, style: str = "mbias") -> tuple[str, str]:
    """(prompt, completion) for one training pair; the loss is taken on the completion only."""
    return render(source, style), f" {target.strip()}"


# A model continuing past its answer starts a new turn; these mark where to cut.
STOP_STRINGS = ("\nText:", "\n\n", "\nDebiased text:", "[INST]", "<end_of_turn>")

_PREAMBLE = re.compile(
    r"^\s*(?:sure[,!.]?\s*)?(?:here(?:'s| is)\s+(?:a|the|my)?\s*(?:debiased|rephrased|rewritten|neutral|unbiased)"
    r"[^:\n]{0,40}:|debiased(?: version| text)?\s*:|rephrased(?: text)?\s*:|rewrite\s*:|output\s*:)\s*",
    re.IGNORECASE,
)
_QUOTES = (('"', '"'), ("\u201c", "\u201d"), ("'", "'"))


def clean_output(raw: str, source: str = "") -> str:
    """The rewrite alone: cut continuation turns, drop preambles, prompt echo and wrapping quotes."""
    text = raw.lstrip()
    for stop in STOP_STRINGS:
        cut = text.find(stop)
        if cut >= 0:
            text = text[:cut]
    text = text.strip()
    if source and text.startswith(INSTRUCTION):
        text = text[len(INSTRUCTION) :].strip()
    previous = None
    while previous != text:
        previous = text
        text = _PREAMBLE.sub("", text, count=1).strip()
        for left, right in _QUOTES:
            if len(text) > 1 and text.startswith(left) and text.endswith(right) and not source.startswith(left):
                text = text[1:-1].strip()
    return text


_REFUSAL = re.compile(
    r"^\s*(?:i'?m sorry|i am sorry|sorry, but|i cannot|i can'?t|i can not|i won'?t|i'?m unable|"
    r"i am unable|as an ai|i apologi[sz]e)",
    re.IGNORECASE,
)


def is_refusal(text: str) -> bool:
    """A refusal is not a rewrite: it loses the whole message."""
    return bool(_REFUSAL.search(text))

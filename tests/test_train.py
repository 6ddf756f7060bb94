"""Fine-tuning pipeline: presets, data loading and filters, loss mask, training, resume, merge, CLI errors."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mbias.errors import MbiasError
from mbias.prompts import training_text
from mbias.splits import is_heldout
from mbias.train.config import apply_overrides, preset
from mbias.train.data import DataSpec, load_training_data, parse_mapping


def _kept_pairs(n: int, tag: str = "") -> list[tuple[str, str]]:
    """n pairs whose sources are not held out (held-out sources never reach training)."""
    pairs, i = [], 0
    while len(pairs) < n:
        src = f"Old people{tag} are useless with computers, case {i}."
        if not is_heldout(src):
            pairs.append((src, f"Some people{tag} need more time with computers, case {i}."))
        i += 1
    return pairs


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def pairs_file(tmp_path) -> Path:
    rows = [{"id": str(i), "biased_text": s, "debiased_text": t} for i, (s, t) in enumerate(_kept_pairs(16))]
    return _write_jsonl(tmp_path / "pairs.jsonl", rows)


def _config(tiny_model_dir: Path, *more: str):
    return apply_overrides(
        preset("cpu-small"),
        [
            f"base=hf:{tiny_model_dir}",
            "batch_size=4",
            "eval_batch_size=4",
            "learning_rate=5e-3",
            "lr_scheduler=constant",
            "warmup_ratio=0",
            "logging_steps=1",
            "val_fraction=0.2",
            "exclude_test_set=",
            *more,
        ],
    )


# -- presets -------------------------------------------------------------------------------------


def test_paper_preset_carries_the_mbias_hyper_parameters():
    c = preset("paper")
    assert (c.lora_r, c.lora_alpha, c.lora_dropout) == (64, 16, 0.2)
    assert (c.learning_rate, c.lr_scheduler, c.warmup_ratio) == (2e-5, "constant", 0.05)
    assert (c.epochs, c.max_steps, c.max_length) == (2.0, -1, 2048)
    assert (c.optim, c.batch_size, c.max_grad_norm) == ("paged_adamw_8bit", 8, 0.3)
    assert (
        c.quantize_4bit
        and c.base == "hf:mistralai/Mistral-7B-Instruct-v0.2"
        and c.prompt_style == "mistral-inst"
    )


def test_cpu_small_preset_and_typed_overrides():
    c = preset("cpu-small")
    assert (c.lora_r, c.lora_alpha, c.target_modules, c.optim) == (16, 32, "all-linear", "adamw_torch")
    assert c.completion_only_loss and c.max_length == 256 and c.prompt_style == "mbias" and c.max_steps > 0
    changed = apply_overrides(c, ["max_steps=6e2", "lora-dropout=0.1", "quantize_4bit=yes", "base=hf:x"])
    assert (changed.max_steps, changed.lora_dropout, changed.quantize_4bit, changed.base) == (
        600,
        0.1,
        True,
        "hf:x",
    )
    assert c.max_steps == preset("cpu-small").max_steps  # the preset itself is untouched
    with pytest.raises(MbiasError, match="unknown setting"):
        apply_overrides(c, ["lora_rank=8"])
    with pytest.raises(MbiasError, match="expected int"):
        apply_overrides(c, ["max_steps=1.5"])
    with pytest.raises(MbiasError, match="unknown preset"):
        preset("gpu-huge")


# -- data ----------------------------------------------------------------------------------------


def test_paradetox_layout_gives_one_pair_per_reference_and_filters(tmp_path):
    kept = _kept_pairs(3, " toxic")
    lines = ["toxic\tneutral1\tneutral2\tneutral3"]
    lines.append(f"{kept[0][0]}\t{kept[0][1]}\tA second rewrite.\t")
    lines.append(f"{kept[1][0]}\t{kept[1][1]}\t\t")
    lines.append(f"{kept[2][0]}\t{kept[2][0]}\t\t")  # reference equals the source: not a detox pair
    heldout = next(f"held {i} idiots" for i in range(100) if is_heldout(f"held {i} idiots"))
    lines.append(f"{heldout}\tHeld people.\t\t")
    test_set = tmp_path / "test.csv"
    test_set.write_text(f'biased_text,x\n"{kept[1][0].upper()}",1\n', encoding="utf-8")
    path = tmp_path / "p.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = apply_overrides(
        preset("cpu-small"), ["references=all", "val_fraction=0", f"exclude_test_set={test_set}"]
    )
    data = load_training_data([str(path)], config)
    assert sorted(p["debiased_text"] for p in data.train) == sorted([kept[0][1], "A second rewrite."])
    dropped = data.card["sources"][0]["dropped"]
    assert dropped["source in the mbias-test set"] == 1
    assert dropped["source held out (splits.is_heldout)"] == 1
    assert dropped["ParaDetox reference equals the toxic source"] == 1
    first_only = load_training_data([str(path)], apply_overrides(config, ["references=first"]))
    assert [p["debiased_text"] for p in first_only.train] == [kept[0][1]]


def test_mixing_caps_weights_mapping_and_validation_split(tmp_path):
    big = _write_jsonl(
        tmp_path / "big.jsonl",
        [{"src": s, "tgt": t, "group": "age"} for s, t in _kept_pairs(40, " big")],
    )
    folder = tmp_path / "bias"
    folder.mkdir()
    _write_jsonl(
        folder / "a.jsonl", [{"biased_text": s, "debiased_text": t} for s, t in _kept_pairs(5, " a")]
    )
    config = apply_overrides(preset("cpu-small"), ["val_fraction=0.1", "exclude_test_set="])
    data = load_training_data([f"{big}:20", f"{folder}:x2"], config, parse_mapping("src=src,tgt=tgt"))
    sources = {s["spec"]: s for s in data.card["sources"]}
    assert sources[f"{big}:20"]["kept"] == 20
    small = sources[f"{folder}:x2"]
    assert small["train"] == 2 * (5 - small["val"])
    assert len(data.val) == 2  # 10 % of 25 distinct sources
    val_sources = {p["biased_text"] for p in data.val}
    assert not val_sources & {p["biased_text"] for p in data.train}
    assert data.card["counts"]["group"]["age"] == sum(
        1 for p in data.train + data.val if p.get("group") == "age"
    )
    again = load_training_data([f"{big}:20", f"{folder}:x2"], config, parse_mapping("src=src,tgt=tgt"))
    assert [p["biased_text"] for p in again.train] == [p["biased_text"] for p in data.train]  # seeded


def test_rows_with_different_keys_load_together(tmp_path):
    """A mined preference file mixes rows from sources with and without group labels."""
    pairs = _kept_pairs(6)
    rows = [{"biased_text": s, "debiased_text": t} for s, t in pairs[:3]]
    rows += [{"biased_text": s, "debiased_text": t, "group": "age", "rejected_text": s} for s, t in pairs[3:]]
    path = _write_jsonl(tmp_path / "mixed.jsonl", rows)
    config = apply_overrides(preset("cpu-small"), ["val_fraction=0", "exclude_test_set="])
    data = load_training_data([str(path)], config)
    assert len(data.train) == 6 and data.card["counts"]["group"] == {"age": 3}
    assert sorted(p["rejected_text"] for p in data.train if p["rejected_text"]) == sorted(
        s for s, _ in pairs[3:]
    )


def test_preference_pairs_differ_by_their_rejected_text(tmp_path):
    """Two models' failures on one text are two preference pairs (the current model's is the one
    that matters); the same failure twice, or an SFT pair twice, is a duplicate."""
    (src, tgt), (other, other_tgt) = _kept_pairs(2)
    older = _write_jsonl(
        tmp_path / "older.jsonl", [{"biased_text": src, "debiased_text": tgt, "rejected_text": "A."}]
    )
    newer = _write_jsonl(
        tmp_path / "newer.jsonl",
        [
            {"biased_text": src, "debiased_text": tgt, "rejected_text": "B."},
            {"biased_text": src, "debiased_text": tgt, "rejected_text": "a. "},  # older's, spaced and cased
            {"biased_text": other, "debiased_text": other_tgt, "rejected_text": "C."},
        ],
    )
    dpo = apply_overrides(preset("cpu-small"), ["method=dpo", "val_fraction=0", "exclude_test_set="])
    data = load_training_data([str(older), str(newer)], dpo)
    assert sorted(p["rejected_text"] for p in data.train) == ["A.", "B.", "C."]
    sft = apply_overrides(preset("cpu-small"), ["val_fraction=0", "exclude_test_set="])
    with pytest.raises(MbiasError, match="its 3 pairs hold 1 new distinct"):  # SFT: one text, one pair
        load_training_data([str(older), str(newer)], sft)


def test_data_spec_parsing():
    assert DataSpec.parse("a/b.tsv:1200") == DataSpec("a/b.tsv", cap=1200)
    assert DataSpec.parse("data/bias:x2.5") == DataSpec("data/bias", weight=2.5)
    assert DataSpec.parse("hf:org/set") == DataSpec("hf:org/set")
    with pytest.raises(MbiasError, match="src=COLUMN"):
        parse_mapping("source=a,tgt=b")


# -- training ------------------------------------------------------------------------------------


def test_loss_mask_covers_the_completion_and_eos_only(tiny_model_dir, pairs_file, tmp_path):
    from mbias.train.data import load_training_data as load
    from mbias.train.sft import build_trainer

    config = _config(tiny_model_dir, "val_fraction=0")
    data = load([str(pairs_file)], config)
    trainer = build_trainer(config, data, tmp_path / "run")
    tokenizer = trainer.processing_class
    pair = data.train[0]
    prompt, completion = training_text(pair["biased_text"], pair["debiased_text"], config.prompt_style)
    example = trainer.train_dataset[0]  # preparation keeps the order of the pairs
    assert example["input_ids"] == tokenizer(prompt + completion + tokenizer.eos_token)["input_ids"]
    n_prompt = len(tokenizer(prompt)["input_ids"])
    labels = example["labels"]
    assert labels[:n_prompt] == [-100] * n_prompt
    assert labels[n_prompt:] == example["input_ids"][n_prompt:]
    assert labels[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(labels[n_prompt:-1]).strip() == pair["debiased_text"]
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    padded = batch["attention_mask"] == 0
    assert (batch["labels"][padded] == -100).all() and padded[:, 0].sum() == 0  # right padding
    batch = {key: value.to(trainer.model.device) for key, value in batch.items()}  # CUDA runs too
    with torch.no_grad():
        fused = trainer.model(**batch, fused_lm_head=True)  # what the trainer optimises (labelled only)
        plain = float(trainer.model(**batch).loss)
    exact = next(trainer.model.parameters()).dtype == torch.float32  # CUDA trains in bf16: 3 digits
    assert abs(float(fused.loss) - plain) < (1e-4 if exact else 1e-2 * plain)


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """One short run (8 steps, checkpoints every 4) shared by the training tests."""
    from mbias.train.sft import train

    root = tmp_path_factory.mktemp("train")
    rows = [{"biased_text": s, "debiased_text": t} for s, t in _kept_pairs(16)]
    data = _write_jsonl(root / "pairs.jsonl", rows)
    output = root / "run"
    summary = train(
        _config(tiny_model_dir, "max_steps=8", "save_steps=4", "eval_steps=4"), [str(data)], output
    )
    return output, summary, data


def test_training_lowers_loss_and_writes_a_loadable_adapter(trained, tiny_model_dir):
    from mbias.engines import load_engine

    output, summary, _ = trained
    log = [json.loads(line) for line in (output / "train_log.jsonl").read_text().splitlines()]
    losses = [entry["loss"] for entry in log if "loss" in entry]
    assert len(losses) == 8 and sum(losses[-2:]) < sum(losses[:2])
    assert summary["global_step"] == 8 and summary["val_loss"] is not None
    assert summary["weights"] == "float32"  # no CUDA: full precision, and the card says so
    assert (output / "adapter_config.json").exists() and (output / "adapter_model.safetensors").exists()
    card = (output / "README.md").read_text()
    assert f"{summary['val_loss']:.4f}" in card and str(tiny_model_dir) in card
    assert "| base weights held as | float32 |" in card
    assert json.loads((output / "data_card.json").read_text())["train_pairs"] == 13
    engine = load_engine(f"hf:{tiny_model_dir}+adapter:{output}")
    out = engine.generate(["Text: Old people are slow.\nDebiased text:"], max_new_tokens=5)
    assert len(out) == 1 and isinstance(out[0][0], str)


@pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("bitsandbytes") is None,
    reason="QLoRA needs CUDA and bitsandbytes",
)
def test_paper_preset_trains_a_4bit_qlora_adapter_on_cuda(tiny_model_dir, pairs_file, tmp_path):
    """The paper's recipe as it runs on a GPU: nf4 base, paged 8-bit AdamW, bf16, checkpointing."""
    from mbias.engines import load_engine
    from mbias.train.sft import train

    config = apply_overrides(
        preset("paper"),
        [f"base=hf:{tiny_model_dir}", "max_steps=8", "learning_rate=2e-3", "batch_size=4"]
        + ["logging_steps=1", "val_fraction=0", "exclude_test_set="],
    )
    summary = train(config, [str(pairs_file)], tmp_path / "qlora")
    assert summary["weights"] == "4-bit nf4 (QLoRA)" and summary["optimizer"] == "paged_adamw_8bit"
    log = [json.loads(line) for line in (tmp_path / "qlora" / "train_log.jsonl").read_text().splitlines()]
    losses = [entry["loss"] for entry in log if "loss" in entry]
    assert len(losses) == 8 and sum(losses[-2:]) < sum(losses[:2])
    assert "4-bit nf4 (QLoRA)" in (tmp_path / "qlora" / "README.md").read_text()
    engine = load_engine(f"hf:{tiny_model_dir}+adapter:{tmp_path / 'qlora'}")
    assert isinstance(engine.generate(["[INST] Old people are slow. [/INST]"], max_new_tokens=4)[0][0], str)


def test_resume_continues_from_the_last_checkpoint(trained, tiny_model_dir, tmp_path):
    import shutil

    from mbias.train.sft import train

    output, _, data = trained
    run = tmp_path / "run"
    shutil.copytree(output, run)
    with pytest.raises(MbiasError, match="--resume"):
        train(_config(tiny_model_dir, "max_steps=12"), [str(data)], run)
    with pytest.raises(MbiasError, match="no checkpoint to resume from"):
        train(_config(tiny_model_dir, "max_steps=12"), [str(data)], tmp_path / "fresh", resume=True)
    (tmp_path / "a-file").write_text("keep me")
    with pytest.raises(MbiasError, match="is a file"):
        train(_config(tiny_model_dir, "max_steps=12"), [str(data)], tmp_path / "a-file")
    assert (tmp_path / "a-file").read_text() == "keep me" and not (tmp_path / "fresh").exists()
    logged_before = len((run / "train_log.jsonl").read_text().splitlines())
    summary = train(_config(tiny_model_dir, "max_steps=12", "save_steps=4"), [str(data)], run, resume=True)
    assert summary["resumed_from"].endswith("checkpoint-8")
    assert summary["global_step"] == 12
    new = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()[logged_before:]]
    assert [e["step"] for e in new if "loss" in e] == [9, 10, 11, 12]


def test_a_run_that_stopped_before_its_first_step_does_not_block_the_next(
    tiny_model_dir, pairs_file, tmp_path
):
    from mbias.train.sft import SET_UP_FILES, train

    run = tmp_path / "run"
    with pytest.raises(MbiasError, match="cannot load model"):  # it stops after writing its cards
        train(_config(tmp_path / "no-such-model", "max_steps=1"), [str(pairs_file)], run)
    assert {p.name for p in run.iterdir()} <= SET_UP_FILES
    summary = train(_config(tiny_model_dir, "max_steps=1"), [str(pairs_file)], run)
    assert summary["global_step"] == 1


def test_merge_gives_the_same_greedy_output_as_the_adapter(trained, tiny_model_dir, tmp_path):
    from mbias.engines import load_engine
    from mbias.train.merge import merge_adapter

    output, _, _ = trained
    merged = merge_adapter(f"hf:{tiny_model_dir}", output, tmp_path / "merged")
    prompt = ["Text: Women are bad drivers.\nDebiased text:"]
    with_adapter = load_engine(f"hf:{tiny_model_dir}+adapter:{output}").generate(prompt, max_new_tokens=8)
    assert load_engine(f"hf:{merged}").generate(prompt, max_new_tokens=8) == with_adapter
    with pytest.raises(MbiasError, match="not a PEFT adapter"):
        merge_adapter(f"hf:{tiny_model_dir}", tmp_path, tmp_path / "other")
    (tmp_path / "file.csv").write_text("x")
    with pytest.raises(MbiasError, match="not an empty folder"):  # a file as --output
        merge_adapter(f"hf:{tiny_model_dir}", output, tmp_path / "file.csv")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text("{not json")
    with pytest.raises(MbiasError, match="not readable JSON"):
        merge_adapter(f"hf:{tiny_model_dir}", broken, tmp_path / "other")
    (broken / "adapter_config.json").write_text((output / "adapter_config.json").read_text())
    with pytest.raises(MbiasError, match="does not load onto"):  # config without weights
        merge_adapter(f"hf:{tiny_model_dir}", broken, tmp_path / "other")


# -- CLI errors ----------------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mbias.cli", *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"text": "a", "label": 1}\n', "need columns biased_text and debiased_text"),
        ("", "no rows"),
        ('{"biased_text": "Old men are slow.", "debiased_text": "Some are slow."}\n' * 5, "duplicate-only"),
    ],
    ids=["missing-columns", "empty", "duplicate-only"],
)
def test_bad_data_fails_through_the_cli_with_one_line(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content, encoding="utf-8")
    result = _cli(
        "train", "--data", str(path), "--output", str(tmp_path / "out"), "--base", "hf:/nonexistent"
    )
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


# -- preference tuning (DPO) and mining -----------------------------------------------------------


def test_dpo_continues_an_adapter_and_widens_the_preference(trained, tiny_model_dir, tmp_path):
    from mbias.engines import load_engine
    from mbias.train.sft import train

    adapter, _, _ = trained
    rows = [
        {"biased_text": s, "debiased_text": t, "rejected_text": s}  # the model's failure: a copy
        for s, t in _kept_pairs(12, tag=" and kids")
    ]
    data = _write_jsonl(tmp_path / "prefs.jsonl", rows + [{**rows[0], "rejected_text": ""}])
    config = _config(tiny_model_dir, "method=dpo", f"init_adapter={adapter}", "max_steps=6", "val_fraction=0")
    summary = train(config, [str(data)], tmp_path / "dpo")
    log = [json.loads(line) for line in (tmp_path / "dpo" / "train_log.jsonl").read_text().splitlines()]
    margins = [e["rewards/margins"] for e in log if "rewards/margins" in e]
    assert len(margins) == 6 and margins[-1] > margins[0] and margins[-1] > 0
    assert summary["method"] == "dpo" and summary["init_adapter"] == str(adapter)
    card = json.loads((tmp_path / "dpo" / "data_card.json").read_text())
    assert card["train_pairs"] == 12 and "no rejected_text" in " ".join(card["sources"][0]["dropped"])
    assert not (tmp_path / "dpo" / "ref").exists()  # only the trained adapter, not TRL's frozen copy
    engine = load_engine(f"hf:{tiny_model_dir}+adapter:{tmp_path / 'dpo'}")
    [[text]] = engine.generate(["Text: Old people are slow.\nDebiased text:"], max_new_tokens=4)
    assert isinstance(text, str)


def test_dpo_needs_rejected_texts_and_known_methods(tiny_model_dir, pairs_file):
    with pytest.raises(MbiasError, match="needs a rejected_text column"):
        load_training_data([str(pairs_file)], _config(tiny_model_dir, "method=dpo"))
    with pytest.raises(MbiasError, match="choose one of sft, dpo"):
        _config(tiny_model_dir, "method=ppo")


def test_mine_refuses_to_write_into_a_file_it_reads_given_with_a_cap(tmp_path):
    from tests.test_debias_cli import run_cli

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(
            json.dumps({"biased_text": f"Old men are slow {i}.", "debiased_text": "Some are slow."}) + "\n"
            for i in range(4)
        )
    )
    before = pairs.read_bytes()
    result = run_cli("mine", "-d", f"{pairs}:4", "-o", str(pairs), "--resume", "--engine", "warp:drive")
    err = result.stderr.decode()
    assert result.returncode == 2 and "is the input file" in err and "Traceback" not in err, err
    assert pairs.read_bytes() == before  # and the engine was never asked for: the check came first


def test_mining_keeps_only_failures_no_judge_is_needed_for(tmp_path):
    from mbias.intervene import Debiaser, DebiasSettings
    from mbias.records import RecordWriter, read_records
    from mbias.train.mine import CHANGED, COPIED, LOOPED, failure, mine, pair_records

    assert failure("Old men are slow.", "Some are slow.", "old men are  slow.") == COPIED
    assert failure("Old men are slow.", "Some are slow.", "Some people are slow.") is None
    assert failure("He is 19.", "He is 19.", "He is nineteen.") == CHANGED
    assert failure("He is 19.", "He is 19.", "He is 19.") is None
    assert failure("Old men are slow.", "Some are slow.", "Some are slow, some are slow.") == LOOPED
    assert failure("He is 19.", "He is 19.", "He is 19 years old, 19 years old.") == LOOPED

    class Echo:  # hands every text back unchanged, except texts about kids, which it shortens
        name, tokenizer, context_window = "echo", None, 1000

        def generate(self, prompts, *, max_new_tokens=128, temperature=0.0, n=1):
            texts = [p.split("Text: ")[-1].split("\n")[0] for p in prompts]
            return [[t.replace(" and kids", "")] * n for t in texts]

    pairs = [
        {"biased_text": "Old men are slow.", "debiased_text": "Some are slow.", "group": "age"},
        {"biased_text": "He is 19 and kids.", "debiased_text": "He is 19 and kids."},
        {"biased_text": "She is 30.", "debiased_text": "She is 30."},
    ]
    records = pair_records(pairs + pairs[:1])  # a weighted source repeats a pair: mined once
    assert len(records) == 3
    debiaser = Debiaser(Echo(), prompt_style="mbias", settings=DebiasSettings(batch_size=2, retries=0))
    out = tmp_path / "prefs.jsonl"
    with RecordWriter(out) as writer:
        counts = mine(debiaser, records[:2], writer)
    assert counts == {COPIED: 1, CHANGED: 1}
    with RecordWriter(out, resume=True) as writer:  # an interrupted run continues where it stopped
        assert mine(debiaser, records, writer) == {"fine": 1}
    rows = {r["biased_text"]: r for r in read_records(out, "biased_text")}
    assert len(rows) == 3 and rows["Old men are slow."]["group"] == "age"
    assert rows["Old men are slow."]["rejected_text"] == "Old men are slow."
    assert rows["He is 19 and kids."]["rejected_text"] == "He is 19."
    assert rows["She is 30."]["rejected_text"] == "" and rows["She is 30."]["model_output"] == "She is 30."


def test_mining_rejects_rewrites_that_keep_less_than_the_reviewed_one(tmp_path):
    from mbias.intervene import Debiaser, DebiasSettings
    from mbias.records import RecordWriter, read_records
    from mbias.train.mine import LOST, failure, mine, pair_records

    def overlap(sources, outputs):  # word overlap stands in for the sentence encoder
        return [
            len(set(a.split()) & set(b.split())) / len(set(a.split()) | set(b.split()))
            for a, b in zip(sources, outputs)
        ]

    source, target = "old nurses at the clinic are slow", "nurses at the clinic are slow"
    assert failure(source, target, "the clinic is slow", (0.2, 0.83)) == LOST
    assert failure(source, target, "the clinic is slow", (0.2, 0.83), meaning_margin=0.7) is None
    assert failure(source, target, "the clinic is slow") is None  # no encoder: no meaning check
    assert failure(source, target, target, (0.2, 0.83)) is None  # the reviewed rewrite itself

    class Shortener:  # keeps only the last three words of every text
        name, tokenizer, context_window = "short", None, 1000

        def generate(self, prompts, *, max_new_tokens=128, temperature=0.0, n=1):
            texts = [p.split("Text: ")[-1].split("\n")[0] for p in prompts]
            return [[" ".join(t.split()[-3:])] * n for t in texts]

    pairs = [
        {"biased_text": source, "debiased_text": target},
        {"biased_text": "old men are slow", "debiased_text": "men are slow"},  # the model writes the same
    ]
    debiaser = Debiaser(Shortener(), prompt_style="mbias", settings=DebiasSettings(batch_size=2, retries=0))
    out = tmp_path / "prefs.jsonl"
    with RecordWriter(out) as writer:
        assert mine(debiaser, pair_records(pairs), writer, similarity=overlap) == {LOST: 1, "fine": 1}
    rows = {r["biased_text"]: r for r in read_records(out, "biased_text")}
    assert rows[source]["rejected_text"] == "clinic are slow"
    assert rows[source]["output_similarity"] < rows[source]["target_similarity"] - 0.1
    assert rows["old men are slow"]["rejected_text"] == ""


def test_reader_labels_turn_passed_rewrites_into_rejected_texts(tmp_path):
    from mbias.splits import is_heldout
    from mbias.train.data import load_training_data
    from mbias.train.mine import COPIED, READ_LOST, READ_UNSAFE, read_failures

    def row(source, target, output, failure=""):
        return {"biased_text": source, "debiased_text": target, "model_output": output, "failure": failure}

    mined = [
        row("old men are slow drivers", "men are slow drivers", "some old men are slow drivers"),  # unsafe
        row("fat kids get picked last", "some kids get picked last", "kids play games"),  # meaning lost
        row("women cant drive", "anyone can learn to drive", "women drive well"),  # fair
        row("women cant park", "anyone can park", "women cant park", COPIED),  # mine's failure: not read
        row("men are loud", "some people are loud", "some people are loud"),  # the target itself
        row("girls cant code", "anyone can code", "girls code"),  # nobody read it
    ]
    verdicts = [(1, 1), (0, 0), (0, 1), (1, 1), (1, 1)]
    labels = {
        (r["biased_text"], r["model_output"]): {"unsafe": u, "meaning_kept": m}
        for r, (u, m) in zip(mined, verdicts)
    }
    rows, counts = read_failures(mined, labels)
    assert counts == {READ_UNSAFE: 1, READ_LOST: 1, "fair": 1}
    rejected = {r["biased_text"]: r["rejected_text"] for r in rows}
    assert rejected == {
        "old men are slow drivers": "some old men are slow drivers",
        "fat kids get picked last": "kids play games",
        "women cant drive": "",
    }
    path = _write_jsonl(tmp_path / "read.jsonl", rows)  # the loader keeps the two failures for DPO
    config = apply_overrides(preset("cpu-small"), ["method=dpo", "val_fraction=0", "exclude_test_set="])
    assert not any(is_heldout(r["biased_text"]) for r in rows)
    assert {p["rejected_text"] for p in load_training_data([str(path)], config).train} == {
        "some old men are slow drivers",
        "kids play games",
    }


def test_select_keeps_only_the_failure_kinds_asked_for(tmp_path):
    from mbias.train.mine import CHANGED, COPIED, LOOPED, READ_UNSAFE

    rows = [
        {"id": "1", "biased_text": "a", "failure": COPIED, "extra": 1, "data_source": "pd/paradetox.tsv"},
        {"id": "2", "biased_text": "b", "failure": READ_UNSAFE},
        {"id": "3", "biased_text": "c", "failure": CHANGED, "data_source": "bias/gender.jsonl"},
        {"id": "4", "biased_text": "d", "failure": ""},
        {"id": "5", "biased_text": "e", "failure": LOOPED},
    ]
    source = _write_jsonl(tmp_path / "mined.jsonl", rows)

    def select(*kinds: str, sources: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
        flags = [x for k in kinds for x in ("--kind", k)] + [x for s in sources for x in ("--source", s)]
        out = ["--out", str(tmp_path / "out.jsonl")]
        return _cli("read-failures", "select", str(source), *flags, *out)

    assert select("copied", "changed").returncode == 0
    kept = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert kept == [rows[0], rows[2]]  # whole rows, unchanged, in order
    assert select("looped").returncode == 0
    assert (tmp_path / "out.jsonl").read_text().count("\n") == 1
    assert select("copied", "changed", "read-unsafe", sources=("paradetox",)).returncode == 0
    assert [json.loads(line)["id"] for line in (tmp_path / "out.jsonl").read_text().splitlines()] == ["1"]
    bad = select("copies")
    assert bad.returncode != 0 and "unknown kind copies" in bad.stderr
    onto_itself = _cli("read-failures", "select", str(source), "--kind", "looped", "--out", str(source))
    assert onto_itself.returncode == 2 and "is the input file" in onto_itself.stderr
    assert len(source.read_text().splitlines()) == len(rows)


def test_cli_method_and_init_adapter_reach_the_config(pairs_file, tmp_path):
    bad = _cli("train", "--data", str(pairs_file), "-o", str(tmp_path / "a"), "--method", "ppo")
    assert bad.returncode == 2 and "choose one of sft, dpo" in bad.stderr
    no_rejected = _cli("train", "--data", str(pairs_file), "-o", str(tmp_path / "b"), "--method", "dpo")
    assert no_rejected.returncode == 2 and "needs a rejected_text column" in no_rejected.stderr
    rows = [{"biased_text": s, "debiased_text": t, "rejected_text": s} for s, t in _kept_pairs(4)]
    prefs = _write_jsonl(tmp_path / "prefs.jsonl", rows)
    args = ["--data", str(prefs), "-o", str(tmp_path / "c"), "--method", "dpo", "--init-adapter", "nowhere"]
    no_adapter = _cli("train", *args)
    assert no_adapter.returncode == 2 and "init_adapter=nowhere: no adapter_config.json" in no_adapter.stderr
    assert not (tmp_path / "c").exists()  # nothing half-written that a retry would trip over


def test_context_pairs_reach_the_prompt_and_the_adapter_records_it(tiny_model_dir, tmp_path):
    """Pairs from longer answers train on the prompt the Debiaser sends for a sentence of an answer,
    and the adapter says so, so that prompt is the one it gets wherever it is used."""
    from mbias import config as settings
    from mbias.train.sft import to_examples, train

    pairs = _kept_pairs(8)
    rows = [{"biased_text": s, "debiased_text": t} for s, t in pairs[:4]]
    rows += [
        {"biased_text": s, "debiased_text": t, "context_before": "We met at noon.", "context_after": ""}
        for s, t in pairs[4:]
    ]
    data = load_training_data(
        [str(_write_jsonl(tmp_path / "ctx.jsonl", rows))], _config(tiny_model_dir, "val_fraction=0")
    )
    prompts = {e["prompt"] for e in to_examples(data.train, "mbias")}
    assert sum("Before: We met at noon.\nText: " in p for p in prompts) == 4
    assert sum("Before:" not in p for p in prompts) == 4
    output = tmp_path / "run"
    train(_config(tiny_model_dir, "max_steps=1", "val_fraction=0"), [str(tmp_path / "ctx.jsonl")], output)
    assert json.loads((output / "train_config.json").read_text())["context"] is True
    entry = settings.resolve(f"hf:{tiny_model_dir}+adapter:{output}")
    assert (entry.prompt_style, entry.context) == ("mbias", True)
    # a round on lone sentences that continues it keeps what it learned; one from scratch has none
    lone = str(_write_jsonl(tmp_path / "lone.jsonl", rows[:4]))
    steps = ("max_steps=1", "val_fraction=0")
    train(_config(tiny_model_dir, *steps, f"init_adapter={output}"), [lone], tmp_path / "continued")
    train(_config(tiny_model_dir, *steps), [lone], tmp_path / "fresh")
    assert json.loads((tmp_path / "continued" / "train_config.json").read_text())["context"] is True
    assert json.loads((tmp_path / "fresh" / "train_config.json").read_text())["context"] is False


def test_context_pairs_command_gives_a_share_of_pairs_neighbours(tmp_path):
    rows = [{"id": "a", "biased_text": s, "debiased_text": t} for s, t in _kept_pairs(40)]
    pairs = _write_jsonl(tmp_path / "pairs.jsonl", rows)
    sentences = _write_jsonl(
        tmp_path / "neg.jsonl",
        [
            {"text": "We met at noon.", "kind": "plain-prose"},
            {"text": "Groups differ.", "kind": "counter-speech"},
        ],
    )
    out = tmp_path / "ctx.jsonl"
    done = _cli(
        "context-pairs",
        "--pairs",
        str(pairs),
        "--sentences",
        str(sentences),
        "--share",
        "0.5",
        "-o",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    made = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["biased_text"], r["debiased_text"]) for r in made] == [
        (r["biased_text"], r["debiased_text"]) for r in rows
    ]
    given = [r for r in made if "context_before" in r]
    assert 0 < len(given) < len(made)  # a share, not all
    assert {r["context_before"] for r in given} | {r["context_after"] for r in given} <= {
        "We met at noon.",
        "",
    }
    assert len({r["id"] for r in made}) == len(made) and made[0]["source_id"] == "a"
    missing = _cli(
        "context-pairs", "--pairs", str(tmp_path / "none"), "--sentences", str(sentences), "-o", str(out)
    )
    assert missing.returncode == 2 and "no pair files" in missing.stderr
    (tmp_path / "sub").mkdir()
    again = _write_jsonl(tmp_path / "sub" / "pairs.jsonl", rows)
    folder, twice_out = str(again.parent), str(tmp_path / "twice.jsonl")
    twice = _cli(
        "context-pairs",
        "--pairs",
        str(again),
        "--pairs",
        folder,
        "--sentences",
        str(sentences),
        "-o",
        twice_out,
    )
    assert twice.returncode == 0 and len((tmp_path / "twice.jsonl").read_text().splitlines()) == len(rows)
    unpaired = _cli("context-pairs", "--pairs", str(sentences), "--sentences", str(sentences), "-o", str(out))
    assert unpaired.returncode == 2 and "every row needs biased_text and debiased_text" in unpaired.stderr


def test_the_1_5b_preset_trains_a_qwen2_adapter_on_the_short_prompt(tmp_path):
    """mbias-1.5b's recipe on a tiny random Qwen2: the loss falls, and the adapter records the short
    prompt so every later use of it renders that prompt."""
    from mbias import config as settings
    from mbias.engines import load_engine
    from mbias.prompts import SHORT_INSTRUCTION, render
    from mbias.train.sft import train
    from tests.conftest import build_tiny_model

    model_dir = build_tiny_model(tmp_path / "qwen2", arch="qwen2")
    rows = [{"biased_text": s, "debiased_text": t} for s, t in _kept_pairs(16)]
    data = _write_jsonl(tmp_path / "pairs.jsonl", rows)
    config = apply_overrides(
        preset("cpu-1.5b"),
        [f"base=hf:{model_dir}", "max_steps=6", "batch_size=4", "learning_rate=5e-3", "warmup_ratio=0"]
        + ["lr_scheduler=constant", "logging_steps=1", "save_steps=3", "val_fraction=0", "exclude_test_set="],
    )
    assert (config.lora_r, config.prompt_style) == (8, "short")
    output = tmp_path / "run"
    summary = train(config, [str(data)], output)
    log = [json.loads(line) for line in (output / "train_log.jsonl").read_text().splitlines()]
    losses = [entry["loss"] for entry in log if "loss" in entry]
    assert summary["global_step"] == 6 and sum(losses[-2:]) < sum(losses[:2])
    entry = settings.resolve(f"hf:{model_dir}+adapter:{output}")
    assert entry.prompt_style == "short"
    assert render("x", entry.prompt_style).startswith(SHORT_INSTRUCTION)
    engine = load_engine(entry.spec)
    assert len(engine.generate([render("Old people are slow.", "short")], max_new_tokens=4)) == 1


def test_sheets_read_the_named_files_in_full_and_sample_the_others(tmp_path):
    def row(i, source, failure=""):
        text = f"{source} text {i}"
        return {
            "id": f"{source}{i}",
            "biased_text": text,
            "debiased_text": f"fair {text}",
            "model_output": f"rewrite {i} of {source}",
            "failure": failure,
            "data_source": source,
        }

    rows = [row(i, "paradetox_train.tsv") for i in range(6)]
    rows += [row(i, "data/bias/toxigen_style.jsonl") for i in range(5)]
    rows += [row(i, "data/bias/gender.jsonl") for i in range(5)]
    rows += [row(9, "paradetox_train.tsv", failure="copied a text that needs a rewrite")]  # mine's own
    mined = _write_jsonl(tmp_path / "mined.jsonl", rows)

    def read(*flags: str) -> list[dict]:
        out = tmp_path / "sheets"
        result = _cli("read-failures", "sheets", str(mined), "--out-dir", str(out), "--sheets", "2", *flags)
        assert result.returncode == 0, result.stderr
        sheets = sorted(out.glob("sheet-*.jsonl"))
        assert len(sheets) == 2
        labelled = [json.loads(line) for s in sheets for line in s.read_text().splitlines()]
        assert all(r["unsafe"] is None and r["meaning_kept"] is None for r in labelled)
        for sheet in sheets:
            sheet.unlink()
        return labelled

    def count(sheet: list[dict], source: str) -> int:
        return sum(r["text"].startswith(source) for r in sheet)

    default = read("--per-file", "2")  # ToxiGen-style read in full, every other file sampled
    assert (
        count(default, "data/bias/toxigen"),
        count(default, "paradetox"),
        count(default, "data/bias/g"),
    ) == (
        5,
        2,
        2,
    )
    whole = read("--per-file", "1", "--whole", "paradetox")
    assert (count(whole, "paradetox"), count(whole, "data/bias/toxigen"), count(whole, "data/bias/g")) == (
        6,
        1,
        1,
    )
    assert not any("text 9" in r["text"] for r in default + whole)  # a mined failure is not read


def test_sheets_never_write_over_sheets_readers_may_have_labelled(tmp_path):
    rows = [{"id": str(i), "biased_text": f"text {i}", "model_output": f"rewrite {i}"} for i in range(4)]
    raw = _write_jsonl(tmp_path / "raw.jsonl", rows)
    unmined = _cli("read-failures", "sheets", str(raw), "--out-dir", str(tmp_path / "x"))
    assert unmined.returncode == 2 and "no debiased_text column" in unmined.stderr
    rows = [{**r, "debiased_text": f"fair {i}", "data_source": "toxigen_x"} for i, r in enumerate(rows)]
    mined = _write_jsonl(tmp_path / "mined.jsonl", rows)
    out = tmp_path / "sheets"
    first = _cli("read-failures", "sheets", str(mined), "--out-dir", str(out), "--sheets", "1")
    assert first.returncode == 0, first.stderr
    labelled = (out / "sheet-1.jsonl").read_text().replace('"unsafe": null', '"unsafe": 1')
    (out / "sheet-1.jsonl").write_text(labelled)
    again = _cli("read-failures", "sheets", str(mined), "--out-dir", str(out), "--sheets", "1", "--seed", "5")
    assert again.returncode == 2 and "may hold readers' labels" in again.stderr
    assert (out / "sheet-1.jsonl").read_text() == labelled


def test_read_failures_says_in_one_line_what_a_wrong_file_lacks(tmp_path):
    mined_rows = [
        {
            "id": str(i),
            "biased_text": f"text {i}",
            "debiased_text": f"fair {i}",
            "model_output": f"rewrite {i}",
        }
        for i in range(3)
    ]
    mined = _write_jsonl(tmp_path / "mined.jsonl", mined_rows)
    few = _cli("read-failures", "sheets", str(mined), "--out-dir", str(tmp_path / "s"), "--sheets", "100")
    assert few.returncode == 0 and len(list((tmp_path / "s").glob("sheet-*.jsonl"))) == 3  # none empty
    five = _write_jsonl(
        tmp_path / "five.jsonl",
        [{**mined_rows[0], "biased_text": f"text {i}", "id": str(i)} for i in range(5)],
    )
    dealt = _cli("read-failures", "sheets", str(five), "--out-dir", str(tmp_path / "f"), "--sheets", "4")
    sizes = sorted(len(p.read_text().splitlines()) for p in (tmp_path / "f").glob("sheet-*.jsonl"))
    assert dealt.returncode == 0 and sizes == [1, 1, 1, 2]  # rounding up the size left sheet 4 empty
    labels = tmp_path / "labels.csv"  # filled in a spreadsheet: CSV reads the labels as "0" and "1"
    labels.write_text("text,candidate,unsafe,meaning_kept\ntext 0,rewrite 0,1,1\ntext 1,rewrite 1,0,1\n")
    out = tmp_path / "pairs.jsonl"
    assert _cli("read-failures", "pairs", str(mined), str(labels), "--out", str(out)).returncode == 0
    assert [json.loads(line)["rejected_text"] for line in out.read_text().splitlines()] == ["rewrite 0", ""]
    no_candidate = _write_jsonl(tmp_path / "nc.jsonl", [{"text": "text 0", "unsafe": 1, "meaning_kept": 1}])
    unmined = _write_jsonl(tmp_path / "raw.jsonl", [{"biased_text": "a", "debiased_text": "b"}])
    elsewhere = _write_jsonl(
        tmp_path / "other.jsonl", [{"text": "x", "candidate": "y", "unsafe": 0, "meaning_kept": 1}]
    )
    for args, message in [
        (("pairs", str(mined), str(no_candidate)), "a row has no text and candidate"),
        (("pairs", str(unmined), str(labels)), "no model_output column"),
        (("pairs", str(mined), str(elsewhere)), "no labelled rewrite matches a row"),
        (("select", str(unmined), "--kind", "copied"), "no rows with a failure column"),
    ]:
        result = _cli("read-failures", *args, "--out", str(tmp_path / "x.jsonl"))
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.jsonl").exists()

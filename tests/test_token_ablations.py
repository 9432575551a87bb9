"""The token ablations of MotionPrompt's appendix B.1 (``-o num_tokens=N -o placement=start|end
-o init_words=w1,w2|random``) on EVERY backbone with ``--model tiny`` (AnimateDiff also with the toy
model): N tokens are added, each initialised from its init word (the mean of its pieces), placed
right after CLIP's BOS / first for T5 ('start') or right before EOS ('end') in the ids the encoder
sees, all N move under guidance, and a prompt too long for the context is cut, never the tokens.
Plus bench_ablation's smoke run."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from mpcore import plugins
from mpcore.config import ConfigError, MotionPromptConfig, SamplerConfig, apply_overrides, to_dict
from mpcore.jobs.guidance import plan_guidance
from mpcore.jobs.options import resolve_sampler
from mpcore.motionprompt import MotionPrompt
from mpcore.sampling import sample
from mpcore.testing import DifferenceFlow, LinearDiscriminator
from mpcore.text import T5TextTokens

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "a red fox runs"
# (backbone, model): every backbone's tiny random model, and AnimateDiff's bundled toy model
CASES = [("animatediff", "tiny"), ("animatediff", "toy"), ("lavie", "tiny"), ("videocrafter2", "tiny"),
         ("dynamicrafter", "tiny"), ("wan", "tiny"), ("cogvideox", "tiny")]
IDS = [f"{b}-{m}" for b, m in CASES]


@pytest.fixture(scope="module")
def start_image(tmp_path_factory) -> str:
    from PIL import Image

    path = tmp_path_factory.mktemp("image") / "start.png"
    pixels = torch.linspace(0, 255, 32 * 32 * 3).reshape(32, 32, 3).to(torch.uint8).numpy()
    Image.fromarray(pixels).save(path)
    return str(path)


def load_case(name: str, model: str, image: str):
    """The backbone, its sampler config cut to 3 steps and its MotionPrompt defaults (as ``mpcore run``
    resolves them) for one optimized step with one iteration."""
    spec = plugins.get("backbone", name).spec
    options = {"image": image} if name == "dynamicrafter" else {}
    backbone = spec.load(model=model, device=torch.device("cpu"), dtype=torch.float32, seed=0, offload=False,
                         attention="auto", **options)
    sampler = resolve_sampler(spec, model, {})
    motion = plan_guidance("motionprompt", spec, model, sampler).config
    sampler = dataclasses.replace(sampler, steps=3, seed=1)
    motion = dataclasses.replace(motion, opt_range=(1, 2), iterations=1, lr=0.01)
    return backbone, sampler, motion


def special_ids(text) -> tuple[int | None, int]:
    """(BOS or None, EOS) of a backbone's tokenizer: CLIP's <|startoftext|>/<|endoftext|>, T5's </s> (no BOS)."""
    if isinstance(text, T5TextTokens):
        return None, text.tokenizer.eos_token_id
    if hasattr(text, "added"):  # open_clip's tokenizer (lvdm)
        from mp_plugin_lvdm.clip import EOT, SOT

        return SOT, EOT
    return text.tokenizer.bos_token_id, text.tokenizer.eos_token_id


def prepared(backbone, sampler, motion, prompt: str) -> MotionPrompt:
    guidance = MotionPrompt(motion, DifferenceFlow(), LinearDiscriminator())
    scheduler = backbone.make_scheduler()
    scheduler.set_timesteps(sampler.steps)
    guidance.prepare(backbone, prompt, sampler, scheduler)
    return guidance


def assert_placed(text, ids: list[int], token_ids: list[int], placement: str) -> None:
    bos, eos = special_ids(text)
    n = len(token_ids)
    assert ids.count(eos) >= 1 and ids[-1] == eos, ids
    if placement == "start":
        first = 0 if bos is None else 1
        if bos is not None:
            assert ids[0] == bos
        assert ids[first:first + n] == token_ids, f"tokens not at the start: {ids}"
    else:
        assert ids[-1 - n:-1] == token_ids, f"tokens not right before EOS: {ids}"
    assert sum(ids.count(t) for t in token_ids) == n  # each exactly once


# ----------------------------------------------------------------------------- config


def test_ablation_placement_start_is_canonical_and_front_an_alias():
    assert MotionPromptConfig(placement="front").placement == "start"
    overridden = apply_overrides(MotionPromptConfig(), ["placement=front", "num_tokens=2", "init_words=thing, random"])
    assert (overridden.placement, overridden.num_tokens, overridden.init_words) == ("start", 2, ("thing", "random"))
    assert to_dict(overridden)["placement"] == "start"  # what the manifest records
    overridden.validate(SamplerConfig(frames=16))
    with pytest.raises(ConfigError, match=r"placement='middle'; allowed: start \| end"):
        MotionPromptConfig(placement="middle").validate(SamplerConfig(frames=16))


# ----------------------------------------------------------------------------- every backbone


@pytest.mark.parametrize("name,model", CASES, ids=IDS)
def test_ablation_tokens_placed_initialised_and_prompt_cut(name, model, start_image):
    backbone, sampler, motion = load_case(name, model, start_image)
    text = backbone.text
    for placement in ("start", "end"):
        config = dataclasses.replace(motion, num_tokens=3, placement=placement, init_words=("authentic", "thing"))
        guidance = prepared(backbone, sampler, config, PROMPT)
        assert guidance.prompt_cut is None
        assert len(guidance.token_ids) == 3 and len(set(guidance.token_ids)) == 3
        assert_placed(text, text.token_ids(guidance.guided_prompt), guidance.token_ids, placement)
        # init words cycle; each init is the mean of its word's pieces (T5 may split a word)
        table = text.embedding_table().detach().float()
        for k, word in enumerate(["authentic", "thing", "authentic"]):
            pieces = text.token_ids(word)
            pieces = [i for i in pieces if i not in special_ids(text)]
            assert torch.allclose(guidance.init_embeddings[k], table[pieces].mean(0), atol=1e-6), (word, pieces)
            assert torch.equal(table[guidance.token_ids[k]], guidance.init_embeddings[k].to(table.dtype))
        if isinstance(text, T5TextTokens):
            assert guidance.init_pieces[0] == text.tokenizer.convert_ids_to_tokens(
                text.tokenizer("authentic", add_special_tokens=False).input_ids)

        # a prompt too long for the context: the prompt's last words go, the tokens stay where they belong
        long_prompt = " ".join(f"fox{k % 10} runs" for k in range(400))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            guidance = prepared(backbone, sampler, config, long_prompt)
        assert guidance.prompt_cut is not None and guidance.prompt_cut["words"] > 0
        assert any("were cut" in str(w.message) for w in caught)
        assert long_prompt.startswith(guidance.prompt_cut["prompt_used"])
        ids = text.token_ids(guidance.guided_prompt)
        assert text.token_ids(guidance.guided_prompt, truncate=False) == ids  # nothing left for truncation
        assert_placed(text, ids, guidance.token_ids, placement)


@pytest.mark.parametrize("name,model", CASES, ids=IDS)
def test_ablation_every_token_moves_under_guidance(name, model, start_image):
    """Two tokens, one a random init, one a word, placed at the start: both move at the one optimized
    step (a token the encoder never saw, or whose gradient is cut, would keep drift 0)."""
    backbone, sampler, motion = load_case(name, model, start_image)
    config = dataclasses.replace(motion, num_tokens=2, placement="start", init_words=("random", "real"))
    guidance = MotionPrompt(config, DifferenceFlow(), LinearDiscriminator())
    result = sample(backbone, PROMPT, sampler, guidance=guidance, progress=False).guidance
    assert result["guided_prompt"] == f"<mp_0> <mp_1> {PROMPT}"
    assert result["init_words"] == ["random", "real"]
    assert result["skipped_updates"] == 0
    assert all(d > 0 for d in result["token_drift_l2"]), result["token_drift_l2"]
    # the random init has a word embedding's scale but is no word: not close to 'real'
    random_init, word_init = guidance.init_embeddings
    table = backbone.text.embedding_table().detach().float()[: min(guidance.token_ids)]
    assert torch.isfinite(random_init).all()
    assert 0.2 < float(random_init.norm() / table.norm(dim=-1).mean()) < 5
    assert float(torch.nn.functional.cosine_similarity(random_init, word_init, dim=0)) < 0.9


def test_ablation_random_init_is_seeded():
    from mp_plugin_animatediff.backbone import load

    backbone = load("tiny", seed=0)
    sampler = SamplerConfig(steps=3, frames=4, height=32, width=32, seed=5)
    config = MotionPromptConfig(num_tokens=2, init_words=("random",), opt_range=(1, 2))
    first = prepared(backbone, sampler, config, PROMPT).init_embeddings
    again = prepared(backbone, sampler, config, PROMPT).init_embeddings
    other = prepared(backbone, dataclasses.replace(sampler, seed=6), config, PROMPT).init_embeddings
    assert torch.equal(first, again)
    assert not torch.equal(first[0], first[1])  # one draw per token
    assert not torch.equal(first, other)


# ----------------------------------------------------------------------------- the benchmark


def test_ablation_bench_smoke(tmp_path):
    out = tmp_path / "out"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_ablation.py"), "--smoke", "--only", "random",
                    "--work", str(tmp_path / "work"), "--out", str(out)], check=True, capture_output=True)
    summary = json.loads((out / "bench_ablation_smoke.json").read_text())
    assert list(summary["variants"]) == ["init random"]
    row = summary["variants"]["init random"]
    assert row["settings"]["init_words"] == "random"
    assert row["comparison"]["metrics"]["flow_warp_error"]["n"] == summary["n_pairs"] == 1
    assert row["tokens"]["all_tokens_moved"] == 1.0
    table = (out / "bench_ablation_smoke.md").read_text()
    assert "| init random |" in table and "flow_warp_error" in table

"""MotionPrompt on VideoCrafter2 and DynamiCrafter: the token goes through OpenCLIP's embedding table
(new rows appended: open_clip's tokenizer has no add_tokens); guidance changes only those rows."""

from __future__ import annotations

import dataclasses

import open_clip
import pytest
import torch

from mp_plugin_lvdm import (VIDEOCRAFTER2_MOTIONPROMPT_DEFAULTS, dynamicrafter_motionprompt_defaults,
                            videocrafter2_motionprompt_defaults)
from mp_plugin_lvdm.backbone import load
from mpcore.config import MotionPromptConfig
from mpcore.motionprompt import MotionPrompt
from mpcore.sampling import sample


def test_tokenizer_is_open_clips_with_pad_zero_and_added_tokens():
    backbone = load("tiny", backbone="videocrafter2")
    text = backbone.text
    prompts = ["White fox on the rock.", "", "word " * 100]
    assert torch.equal(text.tokenize(prompts), open_clip.tokenize(prompts))
    assert text.tokenize([""])[0, :3].tolist() == [49406, 49407, 0]
    ids = text.add_tokens(["<mp_0>"])
    assert ids == [49408] and text.embedding_table().shape[0] == 49409
    tokens = text.tokenize(["White fox on the rock. <mp_0>"])[0]
    plain = open_clip.tokenize(["White fox on the rock."])[0]
    n = int((plain != 0).sum())
    assert tokens[: n - 1].tolist() == plain[: n - 1].tolist() and tokens[n - 1 : n + 1].tolist() == [49408, 49407]
    # the override replaces the row differentiably
    row = torch.zeros(32, requires_grad=True)
    out = text.encode(["a fox <mp_0>"], {49408: row})
    out.sum().backward()
    assert row.grad is not None and row.grad.abs().sum() > 0


@pytest.mark.parametrize("backbone_name,variant", [("videocrafter2", None), ("dynamicrafter", "512")])
def test_guidance_changes_only_token_rows_and_the_video(backbone_name, variant, sampler_config, flow_estimator,
                                                        discriminator, start_image):
    backbone = load("tiny", seed=0, backbone=backbone_name, variant=variant, image=str(start_image))
    config = dataclasses.replace(sampler_config, steps=4)
    table_before = backbone.text.embedding_table().detach().clone()
    params_before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    baseline = sample(backbone, "a fox", config, progress=False).latents
    motion = MotionPromptConfig(**{**VIDEOCRAFTER2_MOTIONPROMPT_DEFAULTS, "opt_range": (1, 3), "iterations": 1})
    guided = sample(backbone, "a fox", config, guidance=MotionPrompt(motion, flow_estimator, discriminator),
                    progress=False)
    table_after = backbone.text.embedding_table().detach()
    vocab = table_before.shape[0]
    assert table_after.shape[0] == vocab + 1
    assert torch.equal(table_after[:vocab], table_before), "a non-token embedding row changed"
    assert not torch.allclose(table_after[vocab].float(), backbone.text.word_embedding("authentic"))
    after = backbone.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in params_before.items() if not k.endswith("token_embedding.weight"))
    assert all(p.grad is None for p in backbone.model.parameters())
    assert not torch.allclose(guided.latents, baseline) and torch.isfinite(guided.latents).all()
    result = guided.guidance
    assert result["guided_prompt"] == "a fox <mp_0>"
    assert [e["step"] for e in result["trace"] if e["optimized"]] == [1, 2]
    first = next(e for e in result["trace"] if e["optimized"])
    assert all(len(i["pairs"]) == 3 and not i["skipped"] for i in first["iterations"])


def test_motionprompt_defaults():
    # the paper's VideoCrafter2 row: 1 token, K=3, 3 < i < 20 (stored [4, 20)), 6 decoded frames, l_tv 5, l_reg 3, lr 1e-3
    paper = dict(num_tokens=1, iterations=3, reference_opt_range=(4, 20), decoded_frames=6, l_disc=1.0, l_tv=5.0, l_reg=3.0,
                 lr=0.001)
    assert videocrafter2_motionprompt_defaults("model.ckpt") == paper
    assert dynamicrafter_motionprompt_defaults("model.ckpt") == paper

"""The AnimateDiff plugin declares the paper's MotionPrompt settings (the core knows no backbone)."""

from __future__ import annotations

from mp_plugin_animatediff import motionprompt_defaults, sampler_defaults
from mpcore.config import MotionPromptConfig


def test_paper_defaults_are_the_papers_animatediff_row():
    # 1 token, K=3, 3 < i < 15 of 50 steps (stored [4, 15)), 2 decoded frames, l_tv 5, l_reg 10, lr 5e-3
    paper = dict(num_tokens=1, iterations=3, reference_opt_range=(4, 15), decoded_frames=2, l_disc=1.0, l_tv=5.0,
                 l_reg=10.0, lr=0.005)
    assert motionprompt_defaults(None) == paper and motionprompt_defaults("some/model") == paper
    assert MotionPromptConfig(**motionprompt_defaults(None)).resolved_opt_range(50) == (4, 15)
    assert sampler_defaults(None) == dict(frames=16, height=512, width=512, steps=50, cfg_scale=7.5)


def test_the_toy_model_changes_only_what_it_declares():
    toy = motionprompt_defaults("toy")
    assert toy == dict(motionprompt_defaults(None), flow_estimator="tvl1_fast", estimate="rollout", rollout_steps=3,
                       reference_opt_range=(28, 40))
    assert sampler_defaults("toy") == dict(frames=8, height=32, width=32, steps=25, cfg_scale=7.5)
    assert sampler_defaults("tiny") == dict(frames=8, height=64, width=64, steps=25, cfg_scale=7.5)
    toy["lr"] = 1.0  # every call returns a fresh copy
    assert motionprompt_defaults("toy")["lr"] == 0.005

"""mpcore.backbones: the glue every backbone plugin shares."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest
import torch

from mpcore import backbones


def test_attention_auto_is_sdpa_without_cuda_and_xformers_there_is_a_clear_error():
    assert backbones.choose_attention("auto", torch.device("cpu")) == "sdpa"
    assert backbones.choose_attention("sdpa", torch.device("cpu")) == "sdpa"
    with pytest.raises(RuntimeError, match="xformers needs a CUDA device.*use --attention sdpa"):
        backbones.choose_attention("xformers", torch.device("cpu"))
    with pytest.raises(ValueError, match="--attention must be one of auto, sdpa, xformers"):
        backbones.choose_attention("flash", torch.device("cpu"))


def test_not_found_names_the_path_and_how_to_pass_one(tmp_path):
    missing = tmp_path / "model.ckpt"
    with pytest.raises(backbones.ModelNotFoundError) as error:
        backbones.require_file(str(missing), "videocrafter2 checkpoint", "Pass --model with the downloaded model.ckpt.")
    assert str(error.value) == f"videocrafter2 checkpoint not found at {missing}. Pass --model with the downloaded model.ckpt."
    assert isinstance(error.value, FileNotFoundError)  # a user error: the CLI prints one line, exit 1
    missing.write_bytes(b"x")
    backbones.require_file(str(missing), "checkpoint", "")


def test_hub_errors_say_how_to_load_offline(tmp_path):
    error = backbones.hub_error("owner/model", "base model", OSError("no network"), "--base")
    assert isinstance(error, backbones.ModelNotFoundError)
    assert "could not load base model 'owner/model': OSError: no network" in str(error)
    assert "`hf download owner/model`" in str(error) and "pass the local folder with --base" in str(error)
    local = backbones.hub_error(str(tmp_path), "base model", OSError("broken"))
    assert str(local) == f"could not load base model {tmp_path}: OSError: broken"


@pytest.mark.parametrize("name,local", [
    ("owner/model", False), ("./model", True), ("/abs/model", True), ("~/model", True), ("dir/model.safetensors", True),
    ("model.ckpt", True), ("a/b/c", True), ("model", True),
])
def test_looks_local(name, local):
    assert backbones.looks_local(name) is local


def test_freeze_and_describe():
    module = torch.nn.Dropout().train()
    linear = torch.nn.Linear(2, 2)
    backbones.freeze(module, linear)
    assert not module.training and not linear.training and not any(p.requires_grad for p in linear.parameters())

    class Loaded:
        name, source, is_random_init = "x", {"model": "m", "seed": 1}, True
        dtype, device = torch.float16, torch.device("cpu")

    assert backbones.describe(Loaded(), extra=2) == {"name": "x", "model": "m", "seed": 1, "random_init": True,
                                                     "dtype": "float16", "device": "cpu", "extra": 2}


def test_defaults_by_model_and_lazy_load_look_up_the_module_when_called(monkeypatch):
    module = types.ModuleType("fake_backbone")
    module.TINY = {"steps": 3}
    module.load = lambda **kwargs: ("first", kwargs)
    monkeypatch.setitem(sys.modules, "fake_backbone", module)
    defaults = backbones.defaults_by_model({"steps": 50}, tiny="fake_backbone:TINY")
    assert defaults(None) == defaults("a.ckpt") == {"steps": 50} and defaults("tiny") == {"steps": 3}
    defaults("tiny")["steps"] = 9  # a fresh copy each call
    assert module.TINY == {"steps": 3} and defaults("tiny") == {"steps": 3}
    load = backbones.lazy_load("fake_backbone", backbone="b")
    assert load(model="m") == ("first", {"backbone": "b", "model": "m"})
    monkeypatch.setattr(module, "load", lambda **kwargs: ("patched", kwargs))  # as tests patch a plugin's load
    assert load()[0] == "patched"


def test_import_is_cheap():
    code = "import sys, mpcore.backbones; print(any(m in sys.modules for m in ('torch', 'diffusers', 'click')))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"

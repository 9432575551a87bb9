"""Tests of mpcore.io.manifest: JSON conversion, atomic writes, versions and the manifest layout."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import torch

from mpcore.io.manifest import build_manifest, json_safe, package_versions, write_json_atomic


@dataclass
class Settings:
    steps: int
    scale: float
    size: tuple[int, int]


def test_json_safe_scalars_and_containers():
    data = {
        "nan": float("nan"),
        "inf": float("-inf"),
        "tuple": (1, 2.5, (3, float("nan"))),
        "path": Path("/tmp/x.mp4"),
        "np_float": np.float32(1.5),
        "np_nan": np.float64("nan"),
        "np_int": np.int64(7),
        "np_bool": np.bool_(True),
        "array": np.array([[1.0, np.nan], [np.inf, 2.0]]),
        "tensor": torch.tensor([1.0, float("nan")]),
        "tensor_scalar": torch.tensor(3),
        "bf16": torch.tensor([0.5], dtype=torch.bfloat16),
        "dtype": torch.float16,
        "dataclass": Settings(steps=50, scale=float("nan"), size=(256, 256)),
        3: "int key",
    }
    safe = json_safe(data)
    assert safe["nan"] is None and safe["inf"] is None
    assert safe["tuple"] == [1, 2.5, [3, None]]
    assert safe["path"] == "/tmp/x.mp4"
    assert safe["np_float"] == 1.5 and type(safe["np_float"]) is float
    assert safe["np_nan"] is None
    assert safe["np_int"] == 7 and type(safe["np_int"]) is int
    assert safe["np_bool"] is True
    assert safe["array"] == [[1.0, None], [None, 2.0]]
    assert safe["tensor"] == [1.0, None]
    assert safe["tensor_scalar"] == 3
    assert safe["bf16"] == [0.5]
    assert safe["dtype"] == "torch.float16"
    assert safe["dataclass"] == {"steps": 50, "scale": None, "size": [256, 256]}
    assert safe["3"] == "int key"
    json.dumps(safe, allow_nan=False)  # strict JSON


def test_write_json_atomic(tmp_path):
    path = tmp_path / "sub" / "run.json"
    written = write_json_atomic({"loss": float("nan"), "values": (1.0, math.inf), "t": torch.ones(2)}, path)
    assert written == path
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"loss": None, "values": [1.0, None], "t": [1.0, 1.0]}
    assert [p.name for p in path.parent.iterdir()] == ["run.json"]  # no temporary left


def test_write_json_atomic_failure_keeps_old_file(tmp_path):
    path = tmp_path / "run.json"
    path.write_text('{"old": true}')

    class Unserializable:
        def __str__(self):
            raise RuntimeError("cannot serialize")

    with pytest.raises(RuntimeError):
        write_json_atomic({"x": Unserializable()}, path)
    assert json.loads(path.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_package_versions():
    versions = package_versions(extra=["numpy", "surely-not-installed-mpcore-xyz"])
    for name in ["python", "torch", "diffusers", "transformers", "timm", "torchvision", "mpcore", "mpcore-kernels"]:
        assert name in versions
    assert versions["python"].count(".") == 2
    assert versions["torch"] is not None
    assert versions["numpy"] == np.__version__
    assert versions["surely-not-installed-mpcore-xyz"] is None


def test_build_manifest():
    manifest = build_manifest(run={"prompt": "a fox", "seed": 0, "loss": float("nan")}, output=Path("fox.mp4"))
    assert manifest["mpcore_manifest_version"] == 1
    created = datetime.fromisoformat(manifest["created"])
    assert created.utcoffset().total_seconds() == 0
    assert manifest["versions"]["torch"] is not None
    platform = manifest["platform"]
    assert {"python", "os", "machine", "torch"} <= set(platform)
    assert isinstance(platform["torch"]["cuda_available"], bool)
    assert manifest["run"] == {"prompt": "a fox", "seed": 0, "loss": None}
    assert manifest["output"] == "fox.mp4"
    json.dumps(manifest, allow_nan=False)
    with pytest.raises(ValueError, match="reserved"):
        build_manifest(mpcore_manifest_version=2)


def test_written_json_has_a_normal_file_mode(tmp_path):
    import os

    from mpcore.io.manifest import write_json_atomic

    path = write_json_atomic({"a": 1}, tmp_path / "m.json")
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask

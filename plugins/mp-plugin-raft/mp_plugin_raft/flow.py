"""Differentiable RAFT flow (Teed & Deng, ECCV 2020) on torchvision's implementation.

``load(...)`` returns a :class:`RAFTFlow`: ``flow = f(frame_a, frame_b)`` with frames (B, 3, H, W)
in [-1, 1] (the range torchvision's RAFT expects) and flow (B, 2, H, W) in pixels, x then y. In
MotionPrompt the flow of decoded frame pairs is fed to the flow discriminator, so gradients must
reach both frames: nothing here runs under ``torch.no_grad``; the RAFT weights themselves are frozen
(``requires_grad=False``, eval mode).

RAFT needs H and W divisible by 8, and its 4-level correlation pyramid needs feature maps of at
least 16 cells, i.e. images of at least 128 px per side. Frames are therefore replicate-padded
(centred) up to the next multiple of 8, and further up to that minimum when smaller; the flow is
cropped back to (H, W).

Weights files come in two layouts, told apart by their keys (see :func:`detect_layout`):

- ``"torchvision"``: ``torchvision.models.optical_flow.raft_{small,large}().state_dict()``;
- ``"original"``: the checkpoints of the authors' repository (github.com/princeton-vl/RAFT,
  ``models.zip``: ``raft-things.pth``, ``raft-sintel.pth``, ``raft-kitti.pth``, ``raft-chairs.pth``
  for the large model, ``raft-small.pth`` for the small one). Their module tree (``core/raft.py``,
  ``core/extractor.py``, ``core/update.py``) is ``fnet`` / ``cnet`` (feature / context encoder),
  ``update_block.{encoder, gru, flow_head, mask}``; they were saved from ``nn.DataParallel``, so
  every key starts with ``module.``. :data:`ENCODER_RULES` and :data:`UPDATE_RULES` rename them to
  torchvision's keys. Both implementations have the same tensors with the same shapes (checked
  layer by layer: conv weight layouts, GRU input order [h, x], context split [hidden, context],
  mask channels 9 x 8 x 8 are identical), so loading is a pure renaming -- apart from the shared
  ``norm3``/``norm4`` alias and ``num_batches_tracked``, see :func:`_merge_downsample_aliases` and
  :func:`_fill_num_batches_tracked`.
"""

from __future__ import annotations

import functools
import math
import os
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.optical_flow import Raft_Large_Weights, Raft_Small_Weights, raft_large, raft_small

from mpcore.io.weights import CheckpointMismatchError, read_state_dict, shapes, state_dict_diff

SIZES = {
    "small": (raft_small, Raft_Small_Weights),
    "large": (raft_large, Raft_Large_Weights),
}
WEIGHT_SUFFIXES = (".pth", ".pt", ".safetensors")
RANDOM = "random"
FORMATS = ("torchvision", "original")
DEFAULT_SIZE = "small"  # when no weights file says otherwise
DATA_PARALLEL_PREFIX = "module."


def normalize_size(size: str) -> str:
    """'small' | 'large' (also 'raft_small' / 'raft_large', any case)."""
    key = str(size).strip().lower()
    if key.startswith("raft_"):
        key = key[len("raft_"):]
    if key not in SIZES:
        raise ValueError(f"unknown RAFT size {size!r}; expected one of: small, large, raft_small, raft_large")
    return key


def pad_amounts(height: int, width: int, multiple: int = 8, minimum: int = 128) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) replicate padding that makes (height, width) a multiple of
    ``multiple`` and at least ``minimum``, centred (the odd pixel goes right / bottom)."""

    def split(n: int) -> tuple[int, int]:
        target = max(math.ceil(n / multiple) * multiple, minimum)
        extra = target - n
        return extra // 2, extra - extra // 2

    left, right = split(width)
    top, bottom = split(height)
    return left, right, top, bottom


class RAFTFlow(nn.Module):
    """A frozen torchvision RAFT as a MotionPrompt flow estimator: ``flow = f(frame_a, frame_b)``."""

    def __init__(
        self,
        raft: nn.Module,
        size: str,
        num_flow_updates: int,
        weights_source: str,
        is_random_init: bool,
        weights_format: str | None = None,
    ):
        super().__init__()
        self.raft = raft
        self.size = size
        self.num_flow_updates = num_flow_updates
        self.weights_source = weights_source
        self.is_random_init = is_random_init
        self.weights_format = weights_format  # "torchvision" | "original" | None (random init)
        # smallest image side the correlation pyramid accepts: 8 * 2 * 2 ** (levels - 1)
        self.min_side = 8 * 2 * 2 ** (raft.corr_block.num_levels - 1)
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "RAFTFlow":
        # a frozen estimator stays in eval mode (BatchNorm of raft_large must not update its stats)
        return super().train(False)

    def forward(self, frame_a: torch.Tensor, frame_b: torch.Tensor) -> torch.Tensor:
        if frame_a.ndim != 4 or frame_a.shape[1] != 3:
            raise ValueError(f"RAFT frames must be (B, 3, H, W); got frame_a {tuple(frame_a.shape)}")
        if frame_a.shape != frame_b.shape:
            raise ValueError(f"RAFT frames must have the same shape; got {tuple(frame_a.shape)} and {tuple(frame_b.shape)}")
        if not (torch.isfinite(frame_a).all() and torch.isfinite(frame_b).all()):
            raise ValueError("RAFT frames contain NaN or inf values")
        height, width = frame_a.shape[-2:]
        left, right, top, bottom = pad_amounts(height, width, 8, self.min_side)
        dtype = next(self.raft.parameters()).dtype
        frames = torch.cat([frame_a, frame_b]).to(dtype)
        frames = F.pad(frames, (left, right, top, bottom), mode="replicate")
        padded_a, padded_b = frames.chunk(2)
        flow = self.raft(padded_a, padded_b, num_flow_updates=self.num_flow_updates)[-1]
        return flow[:, :, top : top + height, left : left + width]

    def describe(self) -> dict[str, Any]:
        """What was loaded, for the run manifest."""
        return {
            "name": "raft",
            "size": self.size,
            "weights": self.weights_source,
            "format": self.weights_format,
            "num_flow_updates": self.num_flow_updates,
            "is_random_init": self.is_random_init,
        }


def _looks_like_path(weights: str) -> bool:
    return weights.lower().endswith(WEIGHT_SUFFIXES) or "/" in weights or os.sep in weights or Path(weights).exists()


def _enum_weights(enum_cls, name: str, size: str):
    key = name.split(".")[-1].strip()  # accept "Raft_Small_Weights.C_T_V2" as well as "C_T_V2"
    for member_name, member in enum_cls.__members__.items():  # includes the DEFAULT alias
        if member_name.lower() == key.lower():
            return member
    names = ", ".join(enum_cls.__members__)
    raise ValueError(
        f"unknown torchvision raft_{size} weights {name!r}; expected one of: {names}, "
        f"a local .pth/.pt/.safetensors path, or {RANDOM!r}"
    )


def _download_state_dict(weights_enum, size: str) -> dict[str, torch.Tensor]:
    try:
        return weights_enum.get_state_dict(progress=False, check_hash=True)
    except Exception as error:
        raise RuntimeError(
            f"could not get torchvision raft_{size} weights {weights_enum} from {weights_enum.url} "
            f"({type(error).__name__}: {error}). Offline? Download that file elsewhere and pass its local "
            f".pth path as the flow weights, or pass weights={RANDOM!r} for a smoke run (random flow)."
        ) from error


# ---------------------------------------------------------------------------------------------
# Checkpoint layouts: torchvision's and the original princeton-vl/RAFT one (Teed & Deng 2020).
#
# Rules map a torchvision *module path* (a key without its last component, the parameter/buffer
# name, which both layouts share: weight, bias, running_mean, running_var, num_batches_tracked) to
# the original module path. Each rule is (regular expression matched against the whole path,
# replacement template). The original names are facts of the original repository's code.

ENCODERS = {"feature_encoder": "fnet", "context_encoder": "cnet"}

# Inside an encoder: torchvision FeatureEncoder -> original BasicEncoder (large; ResidualBlock) /
# SmallEncoder (small; BottleneckBlock), core/extractor.py. torchvision's Conv2dNormActivation
# puts conv and norm into one Sequential (.0 conv, .1 norm); the original has them as siblings.
ENCODER_RULES = (
    (r"convnormrelu\.0", r"conv1"),  # 7x7 stride-2 stem conv
    (r"convnormrelu\.1", r"norm1"),  # its norm (has tensors only in the large cnet: BatchNorm2d)
    (r"(layer[123]\.[01])\.convnormrelu([123])\.0", r"\1.conv\2"),  # block convs (3 in a bottleneck)
    (r"(layer[123]\.[01])\.convnormrelu([123])\.1", r"\1.norm\2"),  # their norms
    (r"(layer[23]\.0)\.downsample\.([01])", r"\1.downsample.\2"),  # stride-2 projection: 1x1 conv, norm
    (r"conv", r"conv2"),  # 1x1 output conv
)

# Update block and upsampling mask: torchvision UpdateBlock / MaskPredictor -> original
# BasicUpdateBlock (large) / SmallUpdateBlock (small), core/update.py.
UPDATE_RULES = {
    "large": (
        # BasicMotionEncoder: convc1 (1x1), convc2 (3x3) on the correlation, convf1/convf2 on the flow
        (r"update_block\.motion_encoder\.convcorr([12])\.0", r"update_block.encoder.convc\1"),
        (r"update_block\.motion_encoder\.convflow([12])\.0", r"update_block.encoder.convf\1"),
        (r"update_block\.motion_encoder\.conv\.0", r"update_block.encoder.conv"),
        # SepConvGRU: gates convz1/convr1/convq1 = horizontal (1x5) pass, convz2/... = vertical (5x1)
        (r"update_block\.recurrent_block\.convgru([12])\.conv([zrq])", r"update_block.gru.conv\2\1"),
        (r"update_block\.flow_head\.conv([12])", r"update_block.flow_head.conv\1"),
        # mask = Sequential(Conv2d 3x3, ReLU, Conv2d 1x1): index 1 is the ReLU, no tensors
        (r"mask_predictor\.convrelu\.0", r"update_block.mask.0"),
        (r"mask_predictor\.conv", r"update_block.mask.2"),
    ),
    "small": (
        # SmallMotionEncoder: a single correlation conv convc1
        (r"update_block\.motion_encoder\.convcorr1\.0", r"update_block.encoder.convc1"),
        (r"update_block\.motion_encoder\.convflow([12])\.0", r"update_block.encoder.convf\1"),
        (r"update_block\.motion_encoder\.conv\.0", r"update_block.encoder.conv"),
        # ConvGRU: one 3x3 pass, gates convz/convr/convq without a suffix
        (r"update_block\.recurrent_block\.convgru1\.conv([zrq])", r"update_block.gru.conv\1"),
        (r"update_block\.flow_head\.conv([12])", r"update_block.flow_head.conv\1"),
        # no mask head in either implementation: the flow is upsampled bilinearly (upflow8)
    ),
}

# In the original ResidualBlock / BottleneckBlock the stride-2 projection is
# ``downsample = nn.Sequential(conv, self.norm3)`` (``self.norm4`` in the bottleneck): ONE module
# under two attribute names, so ``state_dict()`` writes its tensors twice, as ``...norm3.*`` and
# ``...downsample.1.*``. torchvision has it once, as ``downsample.1``. Only the large cnet
# (BatchNorm2d) has such tensors; the InstanceNorm2d (affine=False) and 'none' norms have none.
DOWNSAMPLE_NORM_ALIAS = {"large": "norm3", "small": "norm4"}


def original_key(torchvision_key: str, size: str) -> str:
    """The original princeton-vl/RAFT key (without ``module.``) of a torchvision raft_{size} key."""
    module, _, name = torchvision_key.rpartition(".")
    head, _, inner = module.partition(".")
    if head in ENCODERS:
        rules, path, prefix = ENCODER_RULES, inner, ENCODERS[head] + "."
    else:
        rules, path, prefix = UPDATE_RULES[size], module, ""
    for pattern, replacement in rules:
        match = re.fullmatch(pattern, path)
        if match:
            return f"{prefix}{match.expand(replacement)}.{name}"
    raise KeyError(
        f"no rule maps torchvision raft_{size} key {torchvision_key!r} to the original RAFT layout "
        "(has torchvision's RAFT changed?)"
    )


@functools.lru_cache(maxsize=None)
def torchvision_shapes(size: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of torchvision's raft_{size} state dict (built on the meta device: no memory,
    no RNG draws)."""
    with torch.device("meta"):
        model = SIZES[size][0](weights=None, progress=False)
    return shapes(model.state_dict())


@functools.lru_cache(maxsize=None)
def original_key_table(size: str) -> dict[str, str]:
    """torchvision key -> original key (without ``module.``), for every entry of raft_{size}."""
    table = {key: original_key(key, size) for key in torchvision_shapes(size)}
    if len(set(table.values())) != len(table):
        raise AssertionError(f"the original-RAFT key rules are not one-to-one for raft_{size}")
    return table


def original_shapes(size: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of an original raft_{size} checkpoint (without ``module.`` and without the
    duplicate ``norm3``/``norm4`` alias entries). The shapes are torchvision's: the layouts differ in
    names only."""
    expected = torchvision_shapes(size)
    return {original: expected[key] for key, original in original_key_table(size).items()}


def expected_shapes(weights_format: str, size: str) -> dict[str, tuple[int, ...]]:
    return original_shapes(size) if weights_format == "original" else torchvision_shapes(size)


def strip_data_parallel_prefix(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """(state without ``module.``, the removed prefix) when EVERY key has it (``nn.DataParallel``
    checkpoints, e.g. the original RAFT ones); otherwise (state, '') unchanged."""
    if state and all(key.startswith(DATA_PARALLEL_PREFIX) for key in state):
        return {key[len(DATA_PARALLEL_PREFIX):]: value for key, value in state.items()}, DATA_PARALLEL_PREFIX
    return state, ""


def detect_layout(found: dict[str, tuple[int, ...]]) -> tuple[str, str | None]:
    """(format, size) of the layout -- "torchvision" | "original", "small" | "large" -- whose
    key -> shape manifest shares the most entries with ``found`` (keys without ``module.``); size
    None when small and large match equally well. Raises CheckpointMismatchError when nothing matches.
    """
    scores = {
        (weights_format, size): sum(1 for key, shape in expected_shapes(weights_format, size).items()
                                    if found.get(key) == shape)
        for weights_format in FORMATS
        for size in SIZES
    }
    (best_format, best_size), best = max(scores.items(), key=lambda item: item[1])
    if best == 0:
        examples = ", ".join(sorted(found)[:5]) or "no tensors"
        raise CheckpointMismatchError(
            f"not a RAFT state dict: none of its {len(found)} entries ({examples}, ...) matches torchvision's "
            "raft_small/raft_large layout or the original princeton-vl RAFT layout (fnet.*, cnet.*, update_block.*)"
        )
    if any(score == best and size != best_size for (_, size), score in scores.items()):
        return best_format, None
    return best_format, best_size


def _merge_downsample_aliases(state: dict[str, torch.Tensor], size: str, shown) -> dict[str, torch.Tensor]:
    """Fold the original checkpoints' duplicate ``layerN.0.norm3.*`` (``norm4.*`` for small) entries
    into ``layerN.0.downsample.1.*`` (see DOWNSAMPLE_NORM_ALIAS). Both names hold the same tensor; a
    file with only one of them (e.g. a de-duplicated safetensors copy) is fine, a file where they
    differ is not one the original code could have saved, so it is an error rather than a choice."""
    alias = re.compile(rf"(.*\.layer[23]\.0)\.{DOWNSAMPLE_NORM_ALIAS[size]}\.([^.]+)")
    merged = dict(state)
    for key in state:
        match = alias.fullmatch(key)
        if match is None:
            continue
        canonical = f"{match[1]}.downsample.1.{match[2]}"
        value = merged.pop(key)
        if canonical in merged:
            if merged[canonical].shape != value.shape or not torch.equal(merged[canonical], value):
                raise CheckpointMismatchError(
                    f"{shown(key)} and {shown(canonical)} differ, but in the original RAFT code they are the same "
                    "module (downsample = Sequential(conv, norm)); the file was modified after saving. Re-download it."
                )
        else:
            merged[canonical] = value
    return merged


def _fill_num_batches_tracked(
    state: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]]
) -> dict[str, torch.Tensor]:
    """Add BatchNorm ``num_batches_tracked`` counters the file lacks (files written before PyTorch
    0.4.1, or with those entries stripped), as 0 -- what PyTorch's own BatchNorm loading does for
    such files. The counter is read only in training mode with ``momentum=None``; RAFTFlow runs in
    eval mode on the stored running statistics, so its value never changes the flow."""
    missing = [k for k in expected if k.endswith(".num_batches_tracked") and k not in state]
    filled = dict(state)
    for key in missing:
        filled[key] = torch.tensor(0, dtype=torch.long)
    return filled


def _file_state_dict(path: Path, size: str | None) -> tuple[dict[str, torch.Tensor], str, str]:
    """(torchvision-layout state dict, size, detected format) of a local weights file, checked
    strictly against raft_{size}; ``size`` None = inferred from the file."""
    if not path.is_file():
        raise FileNotFoundError(f"RAFT weights file not found: {path}")
    state, prefix = strip_data_parallel_prefix(read_state_dict(path))
    weights_format, inferred_size = detect_layout(shapes(state))
    if size is None:
        if inferred_size is None:
            raise CheckpointMismatchError(
                f"cannot tell whether {path} holds raft_small or raft_large weights (it matches both equally "
                "well); pass size='small' or size='large'"
            )
        size = inferred_size

    def shown(key: str) -> str:  # a key as written in the file
        return prefix + key

    if weights_format == "original":
        state = _merge_downsample_aliases(state, size, shown)
    expected = expected_shapes(weights_format, size)
    state = _fill_num_batches_tracked(state, expected)
    diff = state_dict_diff({shown(k): v for k, v in expected.items()}, {shown(k): v for k, v in shapes(state).items()})
    if diff:
        if inferred_size not in (None, size):
            advice = (
                f"The file looks like raft_{inferred_size} weights: pass size={inferred_size!r}, or leave size "
                "unset to infer it."
            )
        elif weights_format == "original":
            advice = (
                "Use an unmodified checkpoint from the original repository's models.zip (raft-things.pth, "
                "raft-sintel.pth, raft-kitti.pth, raft-chairs.pth: large; raft-small.pth: small), or a torchvision "
                f"state dict: torch.save(torchvision.models.optical_flow.raft_{size}(weights=...).state_dict(), path)."
            )
        else:
            advice = (
                "Save it as torch.save(torchvision.models.optical_flow.raft_"
                f"{size}(weights=...).state_dict(), path), or use a checkpoint of the original princeton-vl RAFT "
                "code (raft-things.pth, ...), which is recognized by its keys."
            )
        layout = (
            "an original princeton-vl RAFT checkpoint (keys in the file's naming)"
            if weights_format == "original"
            else "a torchvision RAFT state dict"
        )
        other_size = f"; it looks like raft_{inferred_size} weights" if inferred_size not in (None, size) else ""
        raise CheckpointMismatchError(
            f"{path} looks like {layout} but does not match raft_{size} (strict load){other_size}:\n{diff}\n{advice}"
        )
    if weights_format == "original":
        state = {key: state[original] for key, original in original_key_table(size).items()}
    return state, size, weights_format


def load(
    weights: str | os.PathLike | None,
    device: str | torch.device = "cpu",
    seed: int = 0,
    size: str | None = None,
    num_flow_updates: int = 12,
    **options: Any,
) -> RAFTFlow:
    """Build a frozen RAFT flow estimator (Teed & Deng 2020; torchvision implementation).

    ``weights``: ``None`` (= torchvision's ``DEFAULT`` weights of that size), a torchvision weights
    enum name such as ``"C_T_V2"`` (downloaded through torchvision's cache), a local
    ``.pth``/``.pt``/``.safetensors`` file, or ``"random"`` (random init seeded by ``seed``; flow is
    meaningless, for offline smoke runs). A local file may hold a torchvision RAFT state dict or a
    checkpoint of the original princeton-vl/RAFT code (``raft-things.pth`` etc., with or without the
    ``module.`` prefix); the layout is detected from its keys and the load is strict either way.

    ``size``: ``"small"`` | ``"large"``; ``None`` = inferred from a local file's keys and shapes,
    else ``"small"``. An explicit size that contradicts the file raises CheckpointMismatchError.
    The global torch RNG state is left untouched.
    """
    if options:
        raise TypeError(
            f"unknown option(s) for the raft flow estimator: {', '.join(sorted(options))}; "
            "accepted: seed, size (small|large; default: inferred from a weights file, else small), num_flow_updates"
        )
    size = None if size is None else normalize_size(size)
    if int(num_flow_updates) < 1:
        raise ValueError(f"num_flow_updates must be an integer >= 1; got {num_flow_updates!r}")

    state, weights_format = None, None
    is_random = isinstance(weights, str) and weights.strip().lower() == RANDOM
    if is_random:
        size = size or DEFAULT_SIZE
        source = f"random (seed {int(seed)})"
    elif weights is not None and (isinstance(weights, os.PathLike) or _looks_like_path(str(weights))):
        path = Path(weights)
        state, size, weights_format = _file_state_dict(path, size)
        source = str(path)
    else:
        size = size or DEFAULT_SIZE
        weights_enum = _enum_weights(SIZES[size][1], "DEFAULT" if weights is None else str(weights), size)
        state, weights_format = _download_state_dict(weights_enum, size), "torchvision"
        source = f"torchvision {weights_enum}"

    # architecture init draws from the RNG: seed it, inside a fork so the caller's state is unchanged
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        raft = SIZES[size][0](weights=None, progress=False)
    if state is not None:
        raft.load_state_dict(state, strict=True)

    return RAFTFlow(raft, size, int(num_flow_updates), source, is_random, weights_format).to(torch.device(device))

"""The whole plugin contract of mpcore.

A plugin is a module registered under the entry-point group ``mpcore`` whose functions are marked
with :data:`hookimpl` and named after one of the hooks below. Each hook receives a ``register``
callable; the plugin calls it once per thing it provides. First-party plugins use exactly these
hooks, as a third-party ``pip install mp-plugin-x`` would.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("mpcore")
hookimpl = pluggy.HookimplMarker("mpcore")


@hookspec
def register_backbones(register):
    """Register video diffusion backbones.

    Call ``register(BackboneSpec(...))`` (see :class:`mpcore.interfaces.BackboneSpec`): a name, a
    ``load(**kwargs) -> Backbone`` function, the backbone's MotionPrompt/sampler defaults and any
    extra CLI options its loader takes.
    """


@hookspec
def register_flow_estimators(register):
    """Register differentiable optical-flow estimators.

    Call ``register(FlowEstimatorSpec(...))``: ``load(weights, device, **options)`` returns a callable
    ``flow = f(frame_a, frame_b)`` taking frames (B, 3, H, W) in [-1, 1] and returning (B, 2, H, W)
    flow in pixels (x then y), differentiable w.r.t. both frames.
    """


@hookspec
def register_discriminators(register):
    """Register flow discriminators.

    Call ``register(DiscriminatorSpec(...))``: ``load(path, device)`` reads a safetensors file and its
    config JSON, ``random(seed, device)`` builds a tiny random-init one for offline runs; both return a
    callable ``logit = D(flow)`` (flow (B, 2, H, W) in pixels, logit (B,), higher = more real).
    Optional ``build(options, pretrained, seed)`` (a trainable one) and ``save(model, path)`` make the
    plugin trainable with ``mpcore disc train``.
    """


@hookspec
def register_metrics(register):
    """Register video quality metrics (``mpcore eval``).

    Call ``register(MetricSpec(...))`` (see :class:`mpcore.interfaces.MetricSpec`): a snake_case
    name, a description, whether it is VBench's definition (``vbench``), and
    ``load(weights, device, **options)`` returning ``score = f(frames, fps=None)`` for uint8 frames
    (F, H, W, 3); ``load`` raises :class:`mpcore.interfaces.MetricUnavailable` when its weights are
    missing or cannot be loaded.
    """


@hookspec
def register_guidances(register):
    """Register guidance methods (``mpcore run --guidance NAME``).

    Call ``register(GuidanceSpec(...))`` (see :class:`mpcore.interfaces.GuidanceSpec`): a name, a
    ``build(config, context)`` returning a fresh object with the sampler's guidance protocol
    (:class:`mpcore.sampling.Guidance`) from its settings and a :class:`mpcore.interfaces.GuidanceContext`
    (backbone, flow estimator, discriminator, decoder), the dataclass of its ``-o key=value`` settings, and
    what it ``needs`` loaded. MotionPrompt is registered this way too, by mpcore itself (``mpcore.builtin``).
    """


@hookspec
def register_commands(cli):
    """Add click commands to the ``mpcore`` command group ``cli``."""

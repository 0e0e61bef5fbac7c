"""Distillation methods by name (timm-style registry): each declares what it needs and how its selection is made.

A method is one decorated select function (``@register_method``) that writes RUN/selection.safetensors and returns
the details recorded in stages.json and the manifest. Its spec says whether the pipeline must provide a generator
and the inverted per-class statistics, the latent level its selection is at, and the config fields its stage key
hashes. ``d3hr methods`` lists them; d3hr.distillation.select registers the built-in ones (the paper's D3HR and
Base-RS, four baselines, and d3hr-herd).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from d3hr.errors import D3HRError

SelectFn = Callable[..., dict[str, Any]]  # (ctx, out path, key) -> details


@dataclass(frozen=True)
class Method:
    """What a method needs and makes."""

    name: str
    select: SelectFn
    needs_generator: bool  # the generator stage runs (trained here or pretrained)
    needs_inversion: bool  # the invert stage runs: selection reads RUN/stats.safetensors
    level: str  # what the selection holds: 'K' latents at the inversion level, '0' latents, 'images' real images
    key_fields: tuple[str, ...]  # dotted config fields that the select stage's key hashes
    summary: str  # one line for `d3hr methods`
    key_inputs: Callable[[Any], dict[str, Any]] | None = None  # ctx -> what else the key hashes (e.g. a teacher)


METHODS: dict[str, Method] = {}


def register_method(name: str, *, needs_generator: bool, needs_inversion: bool, level: str,
                    key_fields: tuple[str, ...], key_inputs: Callable[[Any], dict[str, Any]] | None = None
                    ) -> Callable[[SelectFn], SelectFn]:
    """Decorator: register ``fn(ctx, out, key) -> details`` as method ``name`` (its docstring's first line is the
    summary). ``key_inputs(ctx)``: inputs outside the config that the selection depends on, hashed into its key."""
    if level not in ("K", "0", "images"):
        raise ValueError(f"level must be K, 0 or images, got {level!r}")

    def deco(fn: SelectFn) -> SelectFn:
        summary = (fn.__doc__ or name).strip().splitlines()[0]
        METHODS[name] = Method(name, fn, needs_generator or needs_inversion, needs_inversion, level, key_fields,
                               summary, key_inputs)
        return fn

    return deco


def get_method(name: str) -> Method:
    """The registered method ``name``, or a one-line error listing the known ones."""
    import d3hr.distillation.select  # noqa: F401  (registers the built-in methods)

    if name not in METHODS:
        raise D3HRError(f"select.method must be one of {', '.join(METHODS)}, got {name!r}")
    return METHODS[name]


def method_names() -> list[str]:
    """Every registered method's name, built-in ones first."""
    import d3hr.distillation.select  # noqa: F401

    return list(METHODS)

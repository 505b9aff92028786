"""Request parameters: parse and resolve against the model's protocol defaults.

Pure functions, so the rules of docs/DESIGN.md "Inference protocols" are tested
without HTTP: ``scales`` with ``mode=whole`` is a 400; ``scales`` with
``mode=slide`` replaces [1.0]; ``multiscale`` defaults to 0.5..1.75.

The query string is strict (:func:`check_query`): a parameter the endpoint does not
know, one given twice, or one that means nothing to the chosen output (``format``
without ``output=overlay``) is a 400 naming it and what is allowed, never silently
ignored: a typo would otherwise run with the defaults and look like an answer.

Tested by tests/service/api/test_app.py (the rules as 400s through /v1) and
tests/service/offline/test_work.py (resolve).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from service.contract.artifact import MODES, MULTISCALE, InferenceProtocol, Mode
from service.errors import BadRequest

MIN_SCALE, MAX_SCALE = 0.1, 4.0


@dataclass(frozen=True)
class InferenceParams:
    mode: Mode
    scales: tuple[float, ...]
    flip: bool


def parse_scales(text: str, *, max_scales: int) -> tuple[float, ...]:
    """``"0.5,1.0,1.5"`` -> (0.5, 1.0, 1.5); every problem is a 400 naming the culprit."""
    parts = [p.strip() for p in text.split(",")]
    if not parts or any(p == "" for p in parts):
        raise BadRequest(f"scales must be a comma-separated list of numbers, got {text!r}")
    if len(parts) > max_scales:
        raise BadRequest(f"at most {max_scales} scales per request, got {len(parts)}")
    out = []
    for p in parts:
        try:
            s = float(p)
        except ValueError:
            raise BadRequest(f"scale {p!r} is not a number") from None
        if not math.isfinite(s) or not MIN_SCALE <= s <= MAX_SCALE:
            raise BadRequest(f"scale {p!r} is outside [{MIN_SCALE}, {MAX_SCALE}]")
        out.append(s)
    return tuple(out)


def resolve(protocol: InferenceProtocol, *, mode: str | None, flip: bool | None, scales: str | None,
            max_scales: int) -> InferenceParams:
    """The request's choices, defaults from the model's protocol for what it leaves out."""
    m = mode or protocol.mode
    if m not in MODES:
        raise BadRequest(f"mode must be one of {', '.join(MODES)}, got {m!r}")
    parsed = parse_scales(scales, max_scales=max_scales) if scales is not None else None
    if m == "whole":
        if parsed is not None:
            raise BadRequest("scales cannot be given with mode=whole (the image is resized into one tile)")
        chosen: tuple[float, ...] = (1.0,)
    elif parsed is not None:
        chosen = parsed
    elif m == "multiscale":
        chosen = MULTISCALE
    else:
        # the protocol's own scales are its slide default only when it is a slide protocol
        chosen = protocol.scales if protocol.mode == "slide" else (1.0,)
    return InferenceParams(mode=m, scales=chosen, flip=protocol.flip if flip is None else flip)



"""Request parameters: parse and resolve against the model's protocol defaults.

Pure functions, so the rules of docs/DESIGN.md "Inference protocols" are tested
without HTTP: ``scales`` with ``mode=whole`` is a 400; ``scales`` with
``mode=slide`` replaces [1.0]; ``multiscale`` defaults to 0.5..1.75.

The query string is strict (:func:`check_query`): a parameter the endpoint does not
know, one given twice, or one that means nothing to the chosen output (``format``
without ``output=overlay``) is a 400 naming it and what is allowed, never silently
ignored: a typo would otherwise run with the defaults and look like an answer.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from service.artifact import MODES, MULTISCALE, Mode, Protocol
from service.errors import BadRequest
from service.outputs import FORMATS

MIN_SCALE, MAX_SCALE = 0.1, 4.0
#: query parameters of POST /v1/segment that every output takes
COMMON_QUERY: tuple[str, ...] = ("mode", "flip", "scales", "output")
#: query parameters that only some outputs take: name -> the OutputOptions field it sets. The
#: outputs that read that field (their ``options`` in service/outputs.py) are the ones that take
#: it, so a new format or option needs no change here.
OPTION_QUERY: dict[str, str] = {"format": "overlay_format", "include_mask": "include_mask"}


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


def resolve(protocol: Protocol, *, mode: str | None, flip: bool | None, scales: str | None,
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


def outputs_taking(name: str) -> list[str]:
    """The outputs for which the option parameter ``name`` means something."""
    return [f.name for f in FORMATS.values() if OPTION_QUERY[name] in f.options]


def query_for(output: str) -> tuple[str, ...]:
    """The query parameters that mean something with ``output`` (a name in FORMATS)."""
    return COMMON_QUERY + tuple(q for q in OPTION_QUERY if output in outputs_taking(q))


def describe_query() -> str:
    """Every parameter, the conditional ones with the outputs they need: for error details."""
    conditional = [f"{q} (output={' or '.join(outputs_taking(q))})" for q in OPTION_QUERY]
    return ", ".join([*COMMON_QUERY, *conditional])


def check_query(names: Iterable[str], output: str) -> None:
    """A 400 naming every query parameter that is unknown, repeated or meaningless with ``output``.

    ``names`` are the parameter names in the order sent, repeats included.
    """
    sent = list(names)
    unknown = list(dict.fromkeys(n for n in sent if n not in COMMON_QUERY and n not in OPTION_QUERY))
    if unknown:
        listed = ", ".join(repr(n) for n in unknown)
        raise BadRequest(f"unknown query parameter{'s' if len(unknown) > 1 else ''} {listed}; "
                         f"/v1/segment takes {describe_query()}")
    # counted once each: linear, however long a hostile query string is
    repeated = [n for n, k in Counter(sent).items() if k > 1]
    if repeated:
        listed = ", ".join(repr(n) for n in repeated)
        raise BadRequest(f"query parameter{'s' if len(repeated) > 1 else ''} {listed} given more than "
                         f"once; give each at most once")
    allowed = query_for(output)
    for name in sent:
        if name not in allowed:
            raise BadRequest(f"{name!r} does not apply to output={output}, only to output="
                             f"{' or '.join(outputs_taking(name))}; with output={output} the parameters "
                             f"are {', '.join(allowed)}")


def check_no_query(names: Iterable[str], path: str) -> None:
    """A 400 naming the query parameters sent to a route that takes none (``/v1/models``)."""
    sent = list(dict.fromkeys(names))
    if sent:
        listed = ", ".join(repr(n) for n in sent)
        raise BadRequest(f"unknown query parameter{'s' if len(sent) > 1 else ''} {listed}; {path} takes none")

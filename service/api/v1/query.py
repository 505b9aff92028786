"""Strict query parameters of /v1: unknown, repeated or meaningless ones are a 400 naming them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from service.codec.outputs import FORMATS
from service.errors import BadRequest

#: query parameters of POST /v1/segment that every output takes
COMMON_QUERY: tuple[str, ...] = ("mode", "flip", "scales", "output")


#: query parameters that only some outputs take: name -> the OutputOptions field it sets. The
#: outputs that read that field (their ``options`` in service/codec/outputs.py) are the ones that take
#: it, so a new format or option needs no change here.
OPTION_QUERY: dict[str, str] = {"format": "overlay_format", "include_mask": "include_mask",
                                "class": "class_name"}


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

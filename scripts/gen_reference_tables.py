"""Markdown tables of every setting and every metric, generated from the code.

    python scripts/gen_reference_tables.py                          # print both tables
    python scripts/gen_reference_tables.py --write docs/DEPLOYMENT.md
    python scripts/gen_reference_tables.py --check docs/DEPLOYMENT.md

The settings come from ``service.settings.Settings`` (one environment variable
``PSPNET_<FIELD>`` and one flag ``--<field>`` each), the metrics from a fresh
``service.telemetry.metrics.Metrics()`` registry. A document holds each table between
``<!-- BEGIN <name> -->`` and ``<!-- END <name> -->`` markers; ``--write``
replaces them, ``--check`` fails when they differ (tests/deploy runs it).
"""

from __future__ import annotations

import argparse
import re
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # runnable from a checkout without an install

from annotated_types import Ge, Gt, Le, Lt  # noqa: E402  (after the path fix above)
from prometheus_client.metrics import MetricWrapperBase  # noqa: E402
from pydantic import SecretStr  # noqa: E402
from pydantic.fields import FieldInfo  # noqa: E402

from service.settings import Settings  # noqa: E402
from service.telemetry.metrics import Metrics  # noqa: E402

ENV_PREFIX = "PSPNET_"
#: suffixes a family's samples carry in the text exposition, by metric type
SERIES_SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count"),
                   "summary": ("", "_sum", "_count"), "info": ("_info",)}


# ---------------------------------------------------------------- settings

@dataclass(frozen=True)
class SettingRow:
    variable: str
    flag: str
    default: str
    accepted: str
    meaning: str


def _default_text(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Path):
        # a path inside the checkout is shown relative to it: never this machine's layout
        return str(value.relative_to(ROOT)) if value.is_relative_to(ROOT) else str(value)
    return str(value)


def _accepted_text(field: FieldInfo) -> str:
    ann = field.annotation
    args = typing.get_args(ann)
    if typing.get_origin(ann) is typing.Literal:
        return ", ".join(str(a) for a in args)
    if isinstance(ann, types.UnionType) or typing.get_origin(ann) is typing.Union:
        words = [a for a in args if typing.get_origin(a) is typing.Literal]
        if words and len(args) == 2:  # a word or a number: "auto, or integer"
            number = next(a for a in args if a not in words)
            return ", ".join(str(w) for a in words for w in typing.get_args(a)) + ", or " + \
                {int: "integer", float: "number"}.get(number, str(number))
        inner = [a for a in args if a is not type(None)]
        ann = inner[0] if len(inner) == 1 else ann
    if ann is bool:
        return "true, false"
    if ann is SecretStr:
        return "secret string"
    if ann is Path:
        return "file path"
    bounds = []
    for m in field.metadata:
        if isinstance(m, Ge):
            bounds.append(f">= {m.ge}")
        elif isinstance(m, Gt):
            bounds.append(f"> {m.gt}")
        elif isinstance(m, Le):
            bounds.append(f"<= {m.le}")
        elif isinstance(m, Lt):
            bounds.append(f"< {m.lt}")
    names: dict[object, str] = {int: "integer", float: "number", str: "string"}
    kind = names.get(ann) or str(getattr(ann, "__name__", ann))
    return f"{kind} {', '.join(bounds)}".strip()


def settings_rows() -> list[SettingRow]:
    return [SettingRow(variable=f"{ENV_PREFIX}{name.upper()}", flag=f"--{name.replace('_', '-')}",
                       default=_default_text(field.default), accepted=_accepted_text(field),
                       meaning=field.description or "")
            for name, field in Settings.model_fields.items()]


def settings_table() -> str:
    lines = ["| Variable | Flag | Default | Accepted | Meaning |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| `{r.variable}` | `{r.flag}` | `{r.default}` | {_cell(r.accepted)} | {_cell(r.meaning)} |"
              for r in settings_rows()]
    return "\n".join(lines)


# ---------------------------------------------------------------- metrics

@dataclass(frozen=True)
class MetricInfo:
    name: str  # the name users query: counters with _total
    family: str  # the family name in the registry
    type: str
    help: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...]  # histograms only, without +Inf
    series: tuple[str, ...]  # every sample name it exposes

    @property
    def query_labels(self) -> frozenset[str]:
        """Labels a query may select on: its own, plus ``le`` on a histogram's buckets."""
        return frozenset(self.labels) | ({"le"} if self.type == "histogram" else frozenset())


def metric_catalogue(metrics: Metrics | None = None) -> list[MetricInfo]:
    """Every metric of a ``Metrics`` registry, in definition order."""
    m = Metrics() if metrics is None else metrics
    out = []
    for collector in vars(m).values():
        if not isinstance(collector, MetricWrapperBase):
            continue
        (family,) = collector.describe()
        suffixes = SERIES_SUFFIXES[family.type]
        # prometheus_client keeps label names and bucket bounds private; they are stable attributes
        labels = tuple(collector._labelnames)
        bounds = tuple(b for b in getattr(collector, "_upper_bounds", ()) if b != float("inf"))
        name = family.name + ("_total" if family.type == "counter" else "")
        out.append(MetricInfo(name=name, family=family.name, type=family.type, help=family.documentation,
                              labels=labels, buckets=bounds, series=tuple(family.name + s for s in suffixes)))
    return out


def _bucket_text(bounds: tuple[float, ...]) -> str:
    return ", ".join(f"{b:g}" for b in bounds)


def metrics_table() -> str:
    lines = ["| Metric | Type | Labels | Meaning |", "| --- | --- | --- | --- |"]
    for mi in metric_catalogue():
        meaning = mi.help
        if mi.type == "histogram":
            meaning += f" (series `_bucket`, `_sum`, `_count`; buckets {_bucket_text(mi.buckets)})"
        labels = ", ".join(f"`{lb}`" for lb in mi.labels) or "none"
        lines.append(f"| `{mi.name}` | {mi.type} | {labels} | {_cell(meaning)} |")
    return "\n".join(lines)


# ---------------------------------------------------------------- documents

def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


TABLES = {"settings-table": settings_table, "metrics-table": metrics_table}


def _block(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- BEGIN {name} -->\n)(.*?)(<!-- END {name} -->)", re.S)


def render_into(text: str) -> str:
    """``text`` with every marked table replaced by its generated version."""
    for name, make in TABLES.items():
        pattern = _block(name)
        if not pattern.search(text):
            raise ValueError(f"no '<!-- BEGIN {name} -->' ... '<!-- END {name} -->' block")
        table = make()

        def fill(m: re.Match[str], table: str = table) -> str:
            return m.group(1) + table + "\n" + m.group(3)

        text = pattern.sub(fill, text)
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--write", type=Path, metavar="DOC", help="replace the marked tables in DOC")
    group.add_argument("--check", type=Path, metavar="DOC", help="exit 1 if DOC's tables are out of date")
    args = ap.parse_args(argv)
    if args.write is None and args.check is None:
        print("## Settings\n\n" + settings_table() + "\n\n## Metrics\n\n" + metrics_table())
        return 0
    doc: Path = args.write or args.check
    text = doc.read_text()
    fresh = render_into(text)
    if args.write is not None:
        doc.write_text(fresh)
        return 0
    if fresh != text:
        print(f"{doc}: settings/metrics tables are out of date; run "
              f"python scripts/gen_reference_tables.py --write {doc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

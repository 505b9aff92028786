"""The settings and metrics tables of docs/DEPLOYMENT.md and README.md are the code's, and say true things."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from service.settings import Settings

from .helpers import ROOT, load_module

DOC = ROOT / "docs" / "DEPLOYMENT.md"
SCRIPT = ROOT / "scripts" / "gen_reference_tables.py"
tables = load_module("scripts/gen_reference_tables.py")


def doc_rows(first_header: str) -> list[list[str]]:
    """Cells of the doc's table whose header starts with ``first_header``, header and rule dropped."""
    lines = DOC.read_text().splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(f"| {first_header} |"))
    rows = []
    for ln in lines[start + 2:]:
        if not ln.startswith("|"):
            break
        rows.append([c.strip().strip("`") for c in ln.strip("|").split(" | ")])
    return rows


@pytest.mark.parametrize("doc", [DOC, ROOT / "README.md"], ids=["DEPLOYMENT", "README"])
def test_doc_tables_are_up_to_date(doc: Path) -> None:
    # if this fails: python scripts/gen_reference_tables.py --write docs/DEPLOYMENT.md (or README.md)
    done = subprocess.run([sys.executable, str(SCRIPT), "--check", str(doc)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr


def test_settings_table_has_exactly_the_settings_fields() -> None:
    documented = [r[0] for r in doc_rows("Variable")]
    assert documented == [f"PSPNET_{name.upper()}" for name in Settings.model_fields]


def test_metrics_table_has_exactly_the_registry() -> None:
    documented = [r[0] for r in doc_rows("Metric")]
    assert documented == [mi.name for mi in tables.metric_catalogue()]


def test_documented_defaults_are_the_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Setting every variable to its documented default gives the same Settings as setting nothing."""
    model = tmp_path / "m.onnx"
    model.write_bytes(b"")
    baseline = Settings(model=model)
    for variable, _flag, default, *_ in doc_rows("Variable"):
        if variable == "PSPNET_MODEL" or default == "unset":
            continue
        monkeypatch.setenv(variable, default)
    assert Settings(model=model) == baseline
    documented_model = next(r[2] for r in doc_rows("Variable") if r[0] == "PSPNET_MODEL")
    assert (ROOT / documented_model).resolve() == Settings.model_fields["model"].default


def test_check_mode_catches_a_stale_table(tmp_path: Path) -> None:
    stale = tmp_path / "doc.md"
    stale.write_text(DOC.read_text().replace("| `PSPNET_PORT` |", "| `PSPNET_PORTE` |"))
    done = subprocess.run([sys.executable, str(SCRIPT), "--check", str(stale)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1 and "out of date" in done.stderr
    subprocess.run([sys.executable, str(SCRIPT), "--write", str(stale)], check=True, timeout=120)
    assert stale.read_text() == DOC.read_text()

"""Render a kustomize overlay of this repository to plain manifests, for validation.

    python scripts/k8s_overlay.py k8s/cpu > cpu.yaml

CI has no kubectl, so this renders the small subset of kustomize that k8s/
uses: ``resources`` (files, or directories with a kustomization.yaml) and
``patches`` whose ``patch`` is an inline JSON 6902 list aimed by ``target``
kind and name. Anything else in a kustomization is an error, not silently
ignored: extend this script, or validate that overlay with ``kubectl kustomize``.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import yaml

KNOWN_KEYS = {"apiVersion", "kind", "resources", "patches"}


class OverlayError(ValueError):
    pass


# ---------------------------------------------------------------- JSON 6902

def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def _walk(doc: Any, path: str) -> tuple[Any, str]:
    """The container that holds the pointer's last token, and that token."""
    if not path.startswith("/"):
        raise OverlayError(f"not a JSON pointer: {path!r}")
    *parents, last = [_unescape(t) for t in path[1:].split("/")]
    node = doc
    for token in parents:
        try:
            node = node[int(token)] if isinstance(node, list) else node[token]
        except (KeyError, IndexError, ValueError) as e:
            raise OverlayError(f"path {path!r}: no {token!r}") from e
    if not isinstance(node, dict | list):
        raise OverlayError(f"path {path!r}: {node!r} holds no members")
    return node, last


def apply_patch(doc: Any, ops: list[dict[str, Any]]) -> Any:
    """``doc`` with the JSON 6902 ``ops`` applied (add, remove, replace, test); ``doc`` is not changed."""
    doc = copy.deepcopy(doc)
    for op in ops:
        kind, path = op.get("op"), op.get("path", "")
        parent, last = _walk(doc, path)
        if kind == "test":
            current = parent[int(last)] if isinstance(parent, list) else parent.get(last)
            if current != op["value"]:
                raise OverlayError(f"test failed at {path!r}: {current!r} != {op['value']!r}")
        elif kind == "add":
            if isinstance(parent, list):
                parent.insert(len(parent) if last == "-" else int(last), copy.deepcopy(op["value"]))
            else:
                parent[last] = copy.deepcopy(op["value"])
        elif kind in ("remove", "replace"):
            exists = (0 <= int(last) < len(parent)) if isinstance(parent, list) else last in parent
            if not exists:
                raise OverlayError(f"{kind} at {path!r}: nothing there")
            if kind == "remove":
                del parent[int(last) if isinstance(parent, list) else last]
            else:
                parent[int(last) if isinstance(parent, list) else last] = copy.deepcopy(op["value"])
        else:
            raise OverlayError(f"unsupported op {kind!r} (add, remove, replace, test)")
    return doc


# ---------------------------------------------------------------- kustomization

def _load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def render(directory: Path) -> list[dict[str, Any]]:
    """The resources of the kustomization in ``directory``, patches applied."""
    kfile = directory / "kustomization.yaml"
    spec = yaml.safe_load(kfile.read_text())
    unknown = set(spec) - KNOWN_KEYS
    if unknown:
        raise OverlayError(f"{kfile}: unsupported keys {sorted(unknown)}")
    resources: list[dict[str, Any]] = []
    for entry in spec.get("resources", []):
        target = (directory / entry).resolve()
        resources += render(target) if target.is_dir() else _load_docs(target)
    for patch in spec.get("patches", []):
        target = patch.get("target", {})
        if set(target) - {"kind", "name"} or "patch" not in patch:
            raise OverlayError(f"{kfile}: only inline patches aimed by target kind/name are supported")
        ops = yaml.safe_load(patch["patch"])
        hits = [i for i, r in enumerate(resources)
                if r.get("kind") == target.get("kind") and r["metadata"]["name"] == target.get("name")]
        if not hits:
            raise OverlayError(f"{kfile}: patch target {target} matches no resource")
        for i in hits:
            resources[i] = apply_patch(resources[i], ops)
    return resources


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        docs = render(Path(args[0]))
    except (OverlayError, OSError) as e:
        print(f"k8s_overlay: {e}", file=sys.stderr)
        return 1
    sys.stdout.write(yaml.safe_dump_all(docs, sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())

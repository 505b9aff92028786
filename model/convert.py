"""Load published PSPNet checkpoints (hszhao/semseg, MMSegmentation) and our own.

Every format is renamed onto :class:`model.pspnet.PSPNet`'s names, the
architecture is read off the tensor shapes (depth, block type, every width,
class count) and the weights are loaded strictly: every tensor of the file is
used and every tensor of the model is given. A file that does not fit raises
:class:`CheckpointError` whose one-line message names the missing and
unexpected keys, in the checkpoint's own spelling, and any shape mismatches.

Files are read with ``torch.load(weights_only=True)``: nothing in a checkpoint
gets to run code.
"""

from __future__ import annotations

import hashlib
import pickle
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from model.pspnet import PSPNet, PSPNetConfig
from model.resnet import STAGE_BLOCKS

Format = Literal["semseg", "mmseg", "native"]
FORMATS: tuple[Format, ...] = ("semseg", "mmseg", "native")
NATIVE_TAG = "pspnet-serving"  # the "format" field model/train.py writes

#: PSPNet's pyramid; the bins are not recorded in any checkpoint, only their count
_BINS = (1, 2, 3, 6)
_LIST_LIMIT = 5  # keys named per category in an error message
# Old PyTorch (< 0.4.1) wrote BatchNorm without this counter; eval never reads it
_OPTIONAL_SUFFIX = ".num_batches_tracked"


class CheckpointError(ValueError):
    """The checkpoint cannot be read or does not fit PSPNet; the message says why."""


# (prefix in the checkpoint, prefix in PSPNet); the first matching rule wins.
_SEMSEG_RULES: tuple[tuple[str, str], ...] = (
    *((f"layer{i}.", f"backbone.layer{i}.") for i in range(5)),
    ("ppm.features.", "ppm.features."), ("cls.", "cls."), ("aux.", "aux."),
)
_MMSEG_RULES: tuple[tuple[str, str], ...] = (
    ("backbone.stem.", "backbone.layer0."),
    *((f"backbone.layer{i}.", f"backbone.layer{i}.") for i in range(1, 5)),
    # ConvModule(conv, bn) per bin; index 0 of the official Sequential is the pooling
    *(r for i in range(len(_BINS)) for r in (
        (f"decode_head.psp_modules.{i}.1.conv.", f"ppm.features.{i}.1."),
        (f"decode_head.psp_modules.{i}.1.bn.", f"ppm.features.{i}.2."))),
    ("decode_head.bottleneck.conv.", "cls.0."), ("decode_head.bottleneck.bn.", "cls.1."),
    ("decode_head.conv_seg.", "cls.4."),
    ("auxiliary_head.convs.0.conv.", "aux.0."), ("auxiliary_head.convs.0.bn.", "aux.1."),
    ("auxiliary_head.conv_seg.", "aux.4."),
)
_NATIVE_RULES: tuple[tuple[str, str], ...] = (("", ""),)
_RULES: dict[str, tuple[tuple[str, str], ...]] = {
    "semseg": _SEMSEG_RULES, "mmseg": _MMSEG_RULES, "native": _NATIVE_RULES,
}
_LAYOUT = {"semseg": "official (hszhao/semseg)", "mmseg": "MMSegmentation", "native": "pspnet-serving"}


@dataclass(frozen=True)
class ConversionReport:
    """What was detected and loaded; the CLI prints :meth:`summary`."""

    format: Format
    config: PSPNetConfig
    tensors: int  # tensors taken from the file
    filled: tuple[str, ...]  # BatchNorm counters the file lacked (set to 0)
    checkpoint_sha256: str | None = None
    dataset: str | None = None  # native checkpoints name their dataset

    @property
    def layout(self) -> str:
        return _LAYOUT[self.format]

    @property
    def block(self) -> str:
        return "bottleneck" if self.config.depth >= 50 else "basic"

    def summary(self) -> list[str]:
        c = self.config
        aux = "none" if c.aux_channels is None else str(c.aux_channels)
        expansion = 4 if c.depth >= 50 else 1
        ppm = c.ppm_channels or c.base_width * 8 * expansion // len(c.bins)  # PSPNet's default: a quarter
        return [
            f"layout: {self.layout}, ResNet-{c.depth} ({self.block} blocks), {c.num_classes} classes",
            f"widths: stem {'/'.join(map(str, c.stem))}, base {c.base_width}, "
            f"ppm {len(c.bins)}x{ppm}, head {c.head_channels}, aux {aux}",
            f"dilation: {c.dilation_scheme}, align_corners: {c.align_corners}, {self.tensors} tensors loaded"
            + (f", {len(self.filled)} BN counters filled" if self.filled else ""),
        ]


# ---------------------------------------------------------------- reading files


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_checkpoint(path: Path) -> object:
    """``torch.load`` with ``weights_only=True``; every failure is a CheckpointError."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message is a page of advice; the class it refused is what the user needs
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found is None:  # not a pickle of anything: junk, or a truncated file
            reason = re.search(r"WeightsUnpickler error:\s*(.+)", str(e))
            raise CheckpointError(f"{path} is not a readable PyTorch checkpoint "
                                  f"({reason.group(1) if reason else 'unpickling failed'})") from None
        raise CheckpointError(
            f"{path} needs pickle to load, which could run code, so it is refused (it holds "
            f"{found.group(1)}). If you trust it, re-save only its weights: torch.save({{'state_dict': "
            "torch.load(path, weights_only=False)['state_dict']}, 'clean.pth')"
        ) from None
    except Exception as e:  # corrupt zip, truncated file, not a torch file at all
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {e}") from None


def extract_state_dict(obj: object) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint: ``obj["state_dict"]``, or ``obj`` itself if it is one."""
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError("the file holds no state dict (neither a 'state_dict' entry nor tensors)")
    bad = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"not a state dict: {len(bad)} entries are not tensors: {_name_list(bad)}")
    return {str(k): v for k, v in obj.items()}


# ---------------------------------------------------------------- renaming


def _rename(key: str, rules: Sequence[tuple[str, str]]) -> str | None:
    for src, dst in rules:
        if key.startswith(src):
            return dst + key[len(src):]
    return None


def _inverse(rules: Sequence[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    # longest target prefix first, so "cls.4." is not taken for "cls." + "4."
    return tuple(sorted(((dst, src) for src, dst in rules), key=lambda r: -len(r[0])))


def _strip_module(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """DataParallel's ``module.`` prefix, removed when every key has it."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}, "module."
    return dict(state), ""


def guess_format(obj: object) -> Format | None:
    """A hint for error messages: which source the keys look like."""
    if isinstance(obj, Mapping) and obj.get("format") == NATIVE_TAG:
        return "native"
    try:
        keys = list(extract_state_dict(obj))
    except CheckpointError:
        return None
    keys = [k.removeprefix("module.") for k in keys]
    if any(k.startswith(("decode_head.", "backbone.stem.")) for k in keys):
        return "mmseg"
    if any(k.startswith("layer0.") for k in keys):
        return "semseg"
    if any(k.startswith("backbone.layer0.") for k in keys):
        return "native"
    return None


# ---------------------------------------------------------------- architecture from shapes


def _count_indices(state: Mapping[str, Any], prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in state if (m := pat.match(k))}
    return max(found) + 1 if found else 0


def _speller(fmt: Format, prefix: str = "") -> Callable[[str], str]:
    """Our key -> the checkpoint's spelling of it (for messages)."""
    inverse = _inverse(_RULES[fmt])
    return lambda key: prefix + (_rename(key, inverse) or key)


def detect_config(state: Mapping[str, torch.Tensor], fmt: Format, prefix: str = "") -> PSPNetConfig:
    """Build the config a renamed state dict was trained with, from its shapes."""
    spell = _speller(fmt, prefix)

    def shape(key: str) -> tuple[int, ...]:
        if key not in state:
            raise CheckpointError(f"cannot read the architecture: the checkpoint has no {spell(key)!r}")
        return tuple(state[key].shape)

    blocks = tuple(_count_indices(state, f"backbone.layer{i}.") for i in range(1, 5))
    if not any(blocks):
        where = spell("backbone.layer1.0.") + "*"
        raise CheckpointError(f"no ResNet blocks under the names this format uses ({where}): "
                              f"not a checkpoint in the {_LAYOUT[fmt]} layout")
    bottleneck = "backbone.layer1.0.conv3.weight" in state
    depth = next((d for d, b in STAGE_BLOCKS.items() if b == blocks and (d >= 50) == bottleneck), None)
    if depth is None:
        kind = "bottleneck" if bottleneck else "basic"
        raise CheckpointError(
            f"unsupported backbone: {kind} blocks per stage {blocks}; supported are ResNet-18/34 "
            f"(basic, {STAGE_BLOCKS[18]} / {STAGE_BLOCKS[34]}) and ResNet-50/101 "
            f"(bottleneck, {STAGE_BLOCKS[50]} / {STAGE_BLOCKS[101]})")
    stem = (shape("backbone.layer0.0.weight")[0], shape("backbone.layer0.3.weight")[0],
            shape("backbone.layer0.6.weight")[0])
    aux = shape("aux.0.weight")[0] if "aux.0.weight" in state else None
    base_width = shape("backbone.layer1.0.conv1.weight")[0]
    ppm = shape("ppm.features.0.1.weight")[0]
    backbone_out = base_width * 8 * (4 if depth >= 50 else 1)
    return PSPNetConfig(
        num_classes=shape("cls.4.weight")[0], depth=depth, stem=stem,
        base_width=base_width,
        dilation_scheme="contract" if fmt == "mmseg" else "all", bins=_BINS,
        # None when PSPNet's default (a quarter of the backbone's channels): one config, one spelling
        ppm_channels=None if ppm * len(_BINS) == backbone_out else ppm,
        head_channels=shape("cls.0.weight")[0], aux_channels=aux, align_corners=fmt != "mmseg",
    )


# ---------------------------------------------------------------- strict loading


def _name_list(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:_LIST_LIMIT])
    return shown + (f", ... (+{len(keys) - _LIST_LIMIT} more)" if len(keys) > _LIST_LIMIT else "")


def _dims(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape)) or "scalar"


def load_strict(model: PSPNet, state: Mapping[str, torch.Tensor], fmt: Format,
                original: Mapping[str, str], prefix: str = "") -> tuple[int, tuple[str, ...]]:
    """Copy ``state`` into ``model``; every key used, none missing, shapes equal.

    ``original`` maps renamed keys back to the checkpoint's spelling (and
    ``prefix`` is the ``module.`` it had), so the message speaks the user's
    language. Returns (tensors loaded, BatchNorm counters filled).
    """
    spell = _speller(fmt, prefix)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith(_OPTIONAL_SUFFIX)]
    filled = tuple(k for k in expected if k not in state and k.endswith(_OPTIONAL_SUFFIX))
    unexpected = [original.get(k, k) for k in state if k not in expected]
    mismatched = [
        f"{original.get(k, k)} is {_dims(v.shape)}, model needs {_dims(expected[k].shape)}"
        for k, v in state.items() if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing: {_name_list([spell(k) for k in missing])}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected: {_name_list(unexpected)}")
        if mismatched:
            parts.append(f"{len(mismatched)} wrong shape: {_name_list(mismatched)}")
        c = model.config
        raise CheckpointError(f"checkpoint does not fit PSPNet (ResNet-{c.depth}, {c.num_classes} classes, "
                              f"{_LAYOUT[fmt]} layout): " + "; ".join(parts))
    full = dict(state)
    for k in filled:
        full[k] = torch.zeros_like(expected[k])
    model.load_state_dict(full, strict=True)
    return len(state), filled


def convert_state_dict(obj: object, fmt: Format) -> tuple[PSPNet, ConversionReport]:
    """The model for an already loaded checkpoint object (see :func:`load_checkpoint`)."""
    if fmt not in FORMATS:
        raise CheckpointError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    guess = guess_format(obj)
    hint = f" (the keys look like --format {guess})" if guess not in (None, fmt) else ""
    try:
        return _convert(obj, fmt)
    except CheckpointError as e:
        raise CheckpointError(f"{e}{hint}") from None


def _native_config(obj: object) -> tuple[PSPNetConfig, str | None]:
    if not isinstance(obj, Mapping) or obj.get("format") != NATIVE_TAG or "config" not in obj:
        raise CheckpointError(f"not a native checkpoint: it lacks format={NATIVE_TAG!r} and a config")
    try:
        config = PSPNetConfig.from_dict(dict(obj["config"]))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"the checkpoint's config is not a PSPNetConfig: {e}") from None
    return config, (str(obj["dataset"]) if obj.get("dataset") else None)


def _convert(obj: object, fmt: Format) -> tuple[PSPNet, ConversionReport]:
    config, dataset = _native_config(obj) if fmt == "native" else (None, None)
    raw, prefix = _strip_module(extract_state_dict(obj))
    rules = _RULES[fmt]
    state: dict[str, torch.Tensor] = {}
    original: dict[str, str] = {}
    for key, value in raw.items():
        new = _rename(key, rules)
        # keys no rule knows keep a name no PSPNet parameter has, so they count as unexpected
        new = new if new is not None else f"\0{key}"
        state[new] = value
        original[new] = prefix + key
    if config is None:
        config = detect_config(state, fmt, prefix)
    try:
        model = PSPNet(config)
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    tensors, filled = load_strict(model, state, fmt, original, prefix)
    model.eval()
    return model, ConversionReport(format=fmt, config=config, tensors=tensors, filled=filled,
                                   dataset=dataset)


def load_checkpoint(path: Path | str, fmt: Format, *, num_classes: int | None = None
                    ) -> tuple[PSPNet, ConversionReport]:
    """Read ``path`` as a ``fmt`` checkpoint; the PSPNet (eval mode, CPU) and what was found.

    ``num_classes``: the class count the target dataset needs; a checkpoint
    with another count is rejected here rather than producing a mislabelled model.
    """
    path = Path(path)
    model, report = convert_state_dict(read_checkpoint(path), fmt)
    if num_classes is not None and report.config.num_classes != num_classes:
        raise CheckpointError(f"the checkpoint has {report.config.num_classes} classes, "
                              f"the dataset {num_classes}")
    return model, ConversionReport(
        format=report.format, config=report.config, tensors=report.tensors, filled=report.filled,
        checkpoint_sha256=file_sha256(path), dataset=report.dataset,
    )

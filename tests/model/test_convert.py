"""Checkpoint converters: renaming, architecture from shapes, strict loading, messages."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from model.convert import CheckpointError, convert_state_dict, file_sha256, load_checkpoint
from model.pspnet import PSPNet
from tests.model.tiny import OFFICIAL, build_tiny, semseg_names

# MMSegmentation's spelling, written out independently of the converter's rule table
_MMSEG = [("backbone.layer0.", "backbone.stem."), ("cls.0.", "decode_head.bottleneck.conv."),
          ("cls.1.", "decode_head.bottleneck.bn."), ("cls.4.", "decode_head.conv_seg."),
          ("aux.0.", "auxiliary_head.convs.0.conv."), ("aux.1.", "auxiliary_head.convs.0.bn."),
          ("aux.4.", "auxiliary_head.conv_seg.")]


def mmseg_names(model: PSPNet) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in model.state_dict().items():
        new = key
        for ours, theirs in _MMSEG:
            if key.startswith(ours):
                new = theirs + key[len(ours):]
        if key.startswith("ppm.features."):
            _, _, i, j, rest = key.split(".", 4)
            new = f"decode_head.psp_modules.{i}.1.{'conv' if j == '1' else 'bn'}.{rest}"
        out[new] = value.clone()
    return out


def _same_function(a: PSPNet, b: PSPNet) -> None:
    x = torch.rand(1, 3, 45, 61, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(a(x)["out"], b(x)["out"])


def test_semseg_checkpoint_round_trip(tmp_path: Path) -> None:
    source = build_tiny(depth=50, **OFFICIAL)
    path = tmp_path / "train_epoch_100.pth"
    torch.save({"epoch": 100, "state_dict": semseg_names(source)}, path)
    model, report = load_checkpoint(path, "semseg")
    assert report.config == source.config
    assert report.tensors == len(source.state_dict()) and report.filled == ()
    assert report.checkpoint_sha256 == file_sha256(path)
    assert "ResNet-50 (bottleneck blocks), 11 classes" in report.summary()[0]
    assert not model.training
    _same_function(source, model)


def test_mmseg_r18_round_trip(tmp_path: Path) -> None:
    # MMSeg's R-18 heads are narrow (128/64 there, 16/8 here): every width comes from the shapes
    source = build_tiny(num_classes=19, head_channels=16, aux_channels=8)
    path = tmp_path / "pspnet_r18-d8.pth"
    torch.save({"meta": {"mmseg_version": "1.2.2"}, "state_dict": mmseg_names(source)}, path)
    model, report = load_checkpoint(path, "mmseg")
    assert report.config == source.config
    assert (report.config.dilation_scheme, report.config.align_corners) == ("contract", False)
    _same_function(source, model)


def test_native_round_trip(tmp_path: Path) -> None:
    source = build_tiny(ppm_channels=12)
    path = tmp_path / "best.pt"
    torch.save({"format": "pspnet-serving", "dataset": "camvid", "config": source.config.to_dict(),
                "state_dict": source.state_dict()}, path)
    model, report = load_checkpoint(path, "native")
    assert report.config == source.config and report.dataset == "camvid"
    _same_function(source, model)


@pytest.mark.parametrize("depth", [18, 34, 50, 101])
def test_depth_and_widths_from_shapes(depth: int) -> None:
    source = build_tiny(depth=depth, base_width=4, stem=(4, 6, 10), ppm_channels=6, head_channels=12,
                        aux_channels=5, num_classes=7, **OFFICIAL)
    _, report = convert_state_dict({"state_dict": semseg_names(source)}, "semseg")
    assert report.config == source.config
    assert report.block == ("bottleneck" if depth >= 50 else "basic")


def test_raw_state_dict_without_wrapper(tmp_path: Path) -> None:
    source = build_tiny(**OFFICIAL)
    path = tmp_path / "raw.pth"
    torch.save(semseg_names(source), path)
    _, report = load_checkpoint(path, "semseg")
    assert report.config == source.config


def test_without_auxiliary_head() -> None:
    source = build_tiny(aux_channels=None)
    state = mmseg_names(source)
    assert not any(k.startswith("auxiliary_head.") for k in state)
    _, report = convert_state_dict({"state_dict": state}, "mmseg")
    assert report.config.aux_channels is None


def test_missing_batchnorm_counters_are_filled() -> None:
    """Checkpoints of PyTorch < 0.4.1 have no num_batches_tracked; eval never reads it."""
    source = build_tiny(**OFFICIAL)
    state = {k: v for k, v in semseg_names(source).items() if not k.endswith("num_batches_tracked")}
    model, report = convert_state_dict({"state_dict": state}, "semseg")
    assert len(report.filled) == sum(k.endswith("num_batches_tracked") for k in source.state_dict())
    _same_function(source, model)


# ---------------------------------------------------------------- messages


def _error(state: dict[str, torch.Tensor], fmt: str = "semseg") -> str:
    with pytest.raises(CheckpointError) as info:
        convert_state_dict({"state_dict": state}, fmt)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message  # the CLI prints it as one line
    return message


def test_missing_keys_are_named_in_the_checkpoints_spelling() -> None:
    state = semseg_names(build_tiny(**OFFICIAL))
    del state["module.layer2.1.bn2.running_var"], state["module.ppm.features.3.2.weight"]
    message = _error(state)
    assert "2 missing: module.layer2.1.bn2.running_var, module.ppm.features.3.2.weight" in message
    assert "unexpected" not in message and "wrong shape" not in message


def test_mmseg_missing_and_unexpected() -> None:
    state = mmseg_names(build_tiny())
    del state["decode_head.psp_modules.2.1.bn.bias"]
    state["decode_head.dsn.weight"] = torch.zeros(3)
    message = _error(state, "mmseg")
    assert "1 missing: decode_head.psp_modules.2.1.bn.bias" in message
    assert "1 unexpected: decode_head.dsn.weight" in message


def test_unexpected_keys_include_unknown_prefixes() -> None:
    state = semseg_names(build_tiny(**OFFICIAL))
    state["module.cls.5.weight"] = torch.zeros(2)  # a renamed key PSPNet does not have
    state["module.criterion.weight"] = torch.zeros(2)  # a key no rule knows
    message = _error(state)
    assert "2 unexpected: module.cls.5.weight, module.criterion.weight" in message


def test_wrong_shape_is_reported_with_both_shapes() -> None:
    state = semseg_names(build_tiny(**OFFICIAL))
    state["module.aux.4.weight"] = torch.zeros(5, 8, 1, 1)  # aux head for 5 classes, main head 11
    message = _error(state)
    assert "1 wrong shape: module.aux.4.weight is 5x8x1x1, model needs 11x8x1x1" in message


def test_wrong_block_count() -> None:
    state = {k: v for k, v in semseg_names(build_tiny(**OFFICIAL)).items() if ".layer4.1." not in k}
    # layer4 now has one block, which no ResNet depth has
    assert "basic blocks per stage (2, 2, 2, 1)" in _error(state)


def test_long_lists_are_cut_with_a_count() -> None:
    state = semseg_names(build_tiny(**OFFICIAL))
    dropped = [k for k in state if ".bn2." in k and k.startswith(("module.layer2.", "module.layer3."))]
    for k in dropped:
        del state[k]
    for i in range(7):
        state[f"module.extra.{i}.weight"] = torch.zeros(1)
    message = _error(state)
    missing = [k for k in dropped if not k.endswith("num_batches_tracked")]  # counters are optional
    assert f"{len(missing)} missing: {', '.join(missing[:5])}, ... (+{len(missing) - 5} more)" in message
    assert "7 unexpected: module.extra.0.weight, module.extra.1.weight" in message
    assert "module.extra.5.weight" not in message and "(+2 more)" in message


def test_wrong_format_gets_a_hint() -> None:
    state = mmseg_names(build_tiny())
    message = _error(state, "semseg")
    assert "no ResNet blocks under the names this format uses (layer1.0.*)" in message
    assert "(the keys look like --format mmseg)" in message


def test_native_needs_its_format_tag() -> None:
    with pytest.raises(CheckpointError, match="not a native checkpoint"):
        convert_state_dict({"state_dict": build_tiny().state_dict()}, "native")


def test_file_that_needs_pickle_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "old.pth"
    # old training scripts stored their argparse namespace next to the weights
    torch.save({"state_dict": semseg_names(build_tiny(**OFFICIAL)), "args": argparse.Namespace(lr=0.01)},
               path)
    with pytest.raises(CheckpointError, match="needs pickle to load, which could run code"):
        load_checkpoint(path, "semseg")


def test_unreadable_and_absent_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(junk, "semseg")
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "absent.pth", "semseg")


def test_non_tensor_entries_are_refused() -> None:
    with pytest.raises(CheckpointError, match="1 entries are not tensors: epoch"):
        convert_state_dict({"epoch": 3, "layer0.0.weight": torch.zeros(1)}, "semseg")


def test_class_count_must_match_the_dataset(tmp_path: Path) -> None:
    path = tmp_path / "ck.pth"
    torch.save({"state_dict": semseg_names(build_tiny(**OFFICIAL))}, path)
    with pytest.raises(CheckpointError, match="the checkpoint has 11 classes, the dataset 19"):
        load_checkpoint(path, "semseg", num_classes=19)

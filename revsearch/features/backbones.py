"""CNN trunks from torchvision, loaded through its standard weights enums (torch imported on use)."""

from __future__ import annotations

import os
from pathlib import Path

from revsearch.errors import WeightsUnavailableError

#: Backbones we support and the channel count of their last feature map.
FEATURE_DIMS = {"resnet50": 2048, "resnet18": 512, "mobilenet_v2": 1280}
DEFAULT_BACKBONE = "resnet50"


def _trunk(name: str, model):
    """The convolutional part of the classifier: everything before global pooling."""
    from torch import nn

    if name.startswith("resnet"):
        return nn.Sequential(*list(model.children())[:-2])
    return model.features


def _weights_help(name: str, member) -> str:
    import torch

    hub = Path(torch.hub.get_dir()) / "checkpoints"
    return (
        f"Could not load pretrained weights for {name} ({type(member).__name__}.{member.name}). Either "
        f"give a local file with weights='/path/to/{name}.pth' (a torchvision state dict), or pre-fill "
        f"the torch cache: put {member.url.rsplit('/', 1)[-1]} (from {member.url}) in {hub} "
        "(set TORCH_HOME to choose another cache folder). "
        "Pass weights=None only if you really want random, untrained weights."
    )


def load_backbone(name: str = DEFAULT_BACKBONE, weights: str | None = "DEFAULT"):
    """Build the trunk of a torchvision classifier in eval mode. ``weights``: ``"DEFAULT"`` or an enum member
    name (e.g. ``"IMAGENET1K_V2"``), a local state-dict file, or ``None`` for random (never a fallback)."""
    import torch
    import torchvision

    if name not in FEATURE_DIMS:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(FEATURE_DIMS)}")
    if weights is None:
        with torch.random.fork_rng():  # seeded, so every process builds the same random model
            torch.manual_seed(0)
            model = torchvision.models.get_model(name, weights=None)
    elif os.path.exists(str(weights)):
        model = torchvision.models.get_model(name, weights=None)
        try:
            state = torch.load(str(weights), map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except Exception as exc:
            raise WeightsUnavailableError(f"{weights}: not a valid {name} state dict ({exc})") from exc
    else:
        enum = torchvision.models.get_model_weights(name)
        try:
            member = enum.DEFAULT if weights == "DEFAULT" else enum[weights]
        except KeyError:
            raise ValueError(
                f"{name} has no weights {weights!r}; choose from {[m.name for m in enum]}, "
                "'DEFAULT', a file path or None"
            ) from None
        try:
            model = torchvision.models.get_model(name, weights=member)
        except Exception as exc:
            raise WeightsUnavailableError(_weights_help(name, member)) from exc
    return _trunk(name, model).eval()


def weights_id(name: str, weights: str | None) -> str:
    """A stable description of the weights, stored in the index to detect mismatched queries."""
    if weights is None:
        return "random"
    if os.path.exists(str(weights)):
        return f"file:{Path(str(weights)).name}"
    import torchvision

    enum = torchvision.models.get_model_weights(name)
    member = enum.DEFAULT if weights == "DEFAULT" else enum[weights]
    return f"{enum.__name__}.{member.name}"

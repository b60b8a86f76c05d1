"""Fixtures for the FiftyOne plugin / brain backend tests: a small real Caltech-101 subset."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
CALTECH = SHARED / "data" / "caltech101" / "101_ObjectCategories"
TORCH_HOME = SHARED / "models" / "torch"
CLASSES = ("airplanes", "Faces", "Leopards", "watch")
PER_CLASS = 6
MODEL = {"backbone": "mobilenet_v2", "weights": "IMAGENET1K_V1"}

if not CALTECH.is_dir() or not (TORCH_HOME / "hub" / "checkpoints").is_dir():
    pytest.skip(f"needs Caltech-101 and torch weights under {SHARED} (absent)", allow_module_level=True)

os.environ["TORCH_HOME"] = str(TORCH_HOME)

import fiftyone as fo  # noqa: E402  (after TORCH_HOME is set)


@pytest.fixture(scope="session")
def caltech_files() -> list[str]:
    """4 classes x 6 images, in a fixed order."""
    return [str(p) for c in CLASSES for p in sorted((CALTECH / c).glob("image_*.jpg"))[:PER_CLASS]]


@pytest.fixture(scope="session")
def plugins_dir(tmp_path_factory) -> Path:
    """A FiftyOne plugins directory containing this repository (as a symlink)."""
    root = tmp_path_factory.mktemp("plugins")
    (root / "revsearch").symlink_to(REPO)
    fo.config.plugins_dir = str(root)
    os.environ["FIFTYONE_PLUGINS_DIR"] = str(root)
    return root


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def make_dataset(prefix: str, files: list[str]) -> fo.Dataset:
    """A new dataset with one sample per file, labelled with its class folder."""
    dataset = fo.Dataset(unique_name(prefix))
    dataset.add_samples([fo.Sample(filepath=f, ground_truth=fo.Classification(label=Path(f).parent.name))
                         for f in files])
    return dataset


def subprocess_env() -> dict:
    """Environment for child Python processes: this repo importable, same FiftyOne database."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env

"""PCA: fitted once, saved, applied identically to queries; whitening equalises variances."""

from __future__ import annotations

import json

import numpy as np
import pytest

from revsearch import PCAReducer
from revsearch.errors import IndexMismatchError


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return (rng.normal(size=(500, 64)) * np.linspace(5, 0.1, 64)).astype(np.float32)


def test_reduces_and_normalises(data):
    pca = PCAReducer.fit(data, 16)
    out = pca.transform(data)
    assert out.shape == (500, 16) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)


def test_whitening_equalises_component_variance(data):
    raw = PCAReducer.fit(data, 8, whiten=True)
    projected = (data - raw.mean) @ raw.components.T / np.sqrt(raw.explained_variance)
    np.testing.assert_allclose(projected.var(axis=0, ddof=1), 1.0, rtol=1e-3)
    plain = PCAReducer.fit(data, 8)
    assert not np.allclose(plain.transform(data), raw.transform(data))


def test_state_round_trip_gives_identical_vectors(data):
    pca = PCAReducer.fit(data, 10, whiten=True)
    again = PCAReducer.from_state(json.loads(json.dumps(pca.state())))
    np.testing.assert_array_equal(again.transform(data[:20]), pca.transform(data[:20]))
    assert again.whiten


def test_errors_name_the_cause(data):
    with pytest.raises(ValueError, match="n_components"):
        PCAReducer.fit(data[:5], 10)
    with pytest.raises(IndexMismatchError, match="dimension 64"):
        PCAReducer.fit(data, 4).transform(np.zeros((1, 32)))

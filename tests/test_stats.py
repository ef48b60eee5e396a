"""Stats computation/aggregation and the Normalizer: modes, round trips, constant dims, clear errors."""

import json

import numpy as np
import pytest
import torch

from latentvla.data.stats import (
    MODES,
    Normalizer,
    aggregate_stats,
    compute_stats,
    stats_from_json,
    stats_to_json,
)

torch.set_num_threads(1)


def _data(seed=0, n=200):
    rng = np.random.default_rng(seed)
    x = rng.normal([1.0, -2.0, 0.5, 3.0], [0.5, 2.0, 1.0, 0.1], size=(n, 4)).astype(np.float32)
    x[:, 2] = 0.5  # a constant dimension
    return x


def test_compute_stats_matches_numpy():
    x = _data()
    s = compute_stats({"action": x})["action"]
    np.testing.assert_allclose(s["mean"], x.mean(0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(s["std"], x.std(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(s["min"], x.min(0))
    np.testing.assert_array_equal(s["max"], x.max(0))
    np.testing.assert_allclose(s["q01"], np.quantile(x, 0.01, axis=0), rtol=1e-6)
    np.testing.assert_allclose(s["q99"], np.quantile(x, 0.99, axis=0), rtol=1e-6)
    assert int(s["count"][0]) == len(x)


def test_image_stats_per_channel_unit_scale():
    images = np.zeros((5, 16, 16, 3), dtype=np.uint8)
    images[..., 0] = 255  # red channel saturated, others black
    s = compute_stats({"observation.images.cam": images})["observation.images.cam"]
    assert s["mean"].shape == (3, 1, 1)
    np.testing.assert_allclose(s["mean"].reshape(3), [1.0, 0.0, 0.0])
    np.testing.assert_allclose(s["max"].reshape(3), [1.0, 0.0, 0.0])
    assert int(s["count"][0]) == 5


def test_aggregate_equals_global():
    a, b = _data(0, 50), _data(1, 150)
    merged = aggregate_stats([compute_stats({"x": a}), compute_stats({"x": b})])["x"]
    whole = compute_stats({"x": np.concatenate([a, b])})["x"]
    for stat in ("mean", "std", "min", "max"):
        np.testing.assert_allclose(merged[stat], whole[stat], rtol=1e-5, atol=1e-6)
    assert int(merged["count"][0]) == 200


@pytest.mark.parametrize("mode", MODES)
def test_roundtrip_numpy_and_torch(mode):
    x = _data()
    norm = Normalizer(compute_stats({"action": x}), {"action": mode})
    y = norm.normalize("action", x)
    np.testing.assert_allclose(norm.unnormalize("action", y), x, rtol=1e-5, atol=1e-5)
    yt = norm.normalize("action", torch.from_numpy(x))
    assert isinstance(yt, torch.Tensor) and yt.dtype == torch.float32
    np.testing.assert_allclose(yt.numpy(), y, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(norm.unnormalize("action", yt).numpy(), x, rtol=1e-5, atol=1e-5)
    if mode == "min_max":
        varying = y[:, [0, 1, 3]]
        assert varying.min() == pytest.approx(-1.0, abs=1e-5) and varying.max() == pytest.approx(1.0, abs=1e-5)
    if mode == "identity":
        np.testing.assert_array_equal(y, x)


@pytest.mark.parametrize("mode", ["mean_std", "min_max", "quantile"])
def test_constant_dim_maps_to_zero_and_roundtrips_exactly(mode):
    x = _data()
    norm = Normalizer(compute_stats({"s": x}), {"s": mode})
    y = norm.normalize("s", x)
    assert np.all(y[:, 2] == 0.0) and np.all(np.isfinite(y))
    assert np.all(norm.unnormalize("s", y)[:, 2] == x[:, 2])


def test_missing_key_and_shape_mismatch_errors():
    stats = compute_stats({"action": np.zeros((10, 7), np.float32) + np.arange(7)})
    with pytest.raises(KeyError, match="observation.state"):
        Normalizer(stats)  # default modes need observation.state too
    norm = Normalizer(stats, {"action": "min_max"})
    with pytest.raises(ValueError, match=r"stats for 'action' have shape \(7,\) but the data has \(4,\)"):
        norm.normalize("action", np.zeros((3, 4), np.float32))
    with pytest.raises(KeyError, match="No normalization mode"):
        norm.normalize("observation.state", np.zeros(7))
    with pytest.raises(ValueError, match="Unknown normalization mode"):
        Normalizer(stats, {"action": "zscore"})


def test_to_dict_from_dict_json_roundtrip():
    x = _data()
    stats = compute_stats({"observation.state": x, "action": x * 2})
    norm = Normalizer(stats)
    restored = Normalizer.from_dict(json.loads(json.dumps(norm.to_dict())))
    np.testing.assert_array_equal(restored.normalize("action", x), norm.normalize("action", x))
    np.testing.assert_array_equal(
        restored.normalize("observation.state", x), norm.normalize("observation.state", x)
    )
    back = stats_from_json(json.loads(json.dumps(stats_to_json(stats))))
    np.testing.assert_array_equal(back["action"]["q99"], stats["action"]["q99"])

"""shrinkflow.data: built-in sources, table -> arrays, stratified splits, normalization, augmentation."""

from __future__ import annotations

import json
import socket

import numpy as np
import pandas as pd
import pytest
import torch

from shrinkflow.config import AugmentConfig, ConfigError, PrepareConfig, load_params
from shrinkflow.data import (
    UNLABELED,
    Augmenter,
    DataError,
    DatasetSpec,
    Normalizer,
    Split,
    Splits,
    builtin_table,
    csv_spec,
    make_loader,
    mnist1d_unlabeled,
    normalize_splits,
    rows_found_in,
    stratified_split,
    table_to_arrays,
    with_unlabeled,
)


# ---------------------------------------------------------------------------------------------
# built-in sources
# ---------------------------------------------------------------------------------------------
def test_builtin_table_digits_is_1797_images_of_8x8_with_labels_0_to_9():
    # when the digits source is loaded
    frame, spec = builtin_table(PrepareConfig(source="digits"))
    # then the raw table has 64 pixel columns plus the label, one row per image
    assert frame.shape == (1797, 65), f"digits should be 1797x65, got {frame.shape}"
    assert spec.kind == "image" and spec.input_shape == (1, 8, 8), "digits are 1x8x8 images"
    assert len(spec.feature_columns) == 64, "digits should have 64 pixel features"
    assert sorted(frame[spec.target].unique()) == list(range(10)), "labels should be 0..9"
    assert spec.classes == tuple(str(d) for d in range(10)), "class names should be '0'..'9'"
    x, y = table_to_arrays(frame, spec)
    assert x.shape == (1797, 1, 8, 8) and x.dtype == np.float32, "digits arrays should be float32 Nx1x8x8"
    assert np.array_equal(y, frame[spec.target].to_numpy()), "label i should map to class index i"
    low, high = spec.value_range
    assert low <= x.min() and x.max() <= high, "pixels should lie within the declared value range"


def test_builtin_table_breast_cancer_is_30_features_2_classes():
    frame, spec = builtin_table(PrepareConfig(source="breast_cancer"))
    assert spec.kind == "tabular" and spec.input_shape == (30,), "breast_cancer is a 30-feature table"
    assert frame.shape == (569, 31), f"breast_cancer should be 569x31, got {frame.shape}"
    assert spec.labels == ("0", "1"), "the raw label values should be '0' and '1'"
    assert spec.classes == ("malignant", "benign"), "class names should follow sklearn's target_names"
    assert not any(" " in column for column in spec.feature_columns), "column names should have no spaces"
    x, y = table_to_arrays(frame, spec)
    assert x.shape == (569, 30) and set(np.unique(y)) == {0, 1}, "arrays should be 569x30 with 2 classes"


def _forbid_network(monkeypatch: pytest.MonkeyPatch) -> None:
    import requests

    def refuse(*args, **kwargs):
        raise AssertionError("mnist1d generation must not touch the network")

    monkeypatch.setattr(requests, "get", refuse)
    monkeypatch.setattr(requests.Session, "request", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_builtin_table_mnist1d_is_generated_locally_and_deterministically(monkeypatch):
    # given no network at all
    _forbid_network(monkeypatch)
    cfg = PrepareConfig(source="mnist1d", mnist1d_samples=200, seed=3)
    # when the table is generated twice with one seed and once with another
    first, spec = builtin_table(cfg)
    again, _ = builtin_table(cfg)
    other, _ = builtin_table(cfg.model_copy(update={"seed": 4}))
    # then it has the requested rows of 40-sample signals, is reproducible, and the seed matters
    assert first.shape == (200, 41), f"200 signals of 40 samples + label expected, got {first.shape}"
    assert spec.kind == "signal" and spec.input_shape == (1, 40), "mnist1d samples are 1x40 signals"
    pd.testing.assert_frame_equal(first, again, obj="mnist1d with the same seed")
    assert not first.equals(other), "a different seed should generate different signals"
    assert set(first[spec.target]) == set(range(10)), "all ten classes should be generated"
    x, _ = table_to_arrays(first, spec)
    assert x.shape == (200, 1, 40), "mnist1d arrays should be N x 1 x 40"


def test_mnist1d_samples__not_a_multiple_of_ten_is_rejected_naming_the_key(tmp_path):
    # given a sample count mnist1d cannot split evenly over its 10 classes
    path = tmp_path / "params.yaml"
    path.write_text("prepare:\n  source: mnist1d\n  mnist1d_samples: 205\n")
    # then it is refused up front instead of silently giving 200 rows
    with pytest.raises(ConfigError, match=r"prepare\.mnist1d_samples"):
        load_params(path)


def test_builtin_table__csv_source_is_not_builtin():
    cfg = PrepareConfig(source="csv", csv={"path": "x.csv"})
    with pytest.raises(DataError, match="csv"):
        builtin_table(cfg)


# ---------------------------------------------------------------------------------------------
# user tables
# ---------------------------------------------------------------------------------------------
def _iris_like() -> pd.DataFrame:
    return pd.DataFrame({
        "a": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
        "b": [1, 2, 3, 4, 5, 6],
        "species": ["setosa", "virginica", "setosa", "versicolor", "virginica", "setosa"],
    })


def test_csv_spec_uses_every_other_column_as_a_feature_and_sorted_labels_as_classes():
    spec = csv_spec(_iris_like(), "species", "iris")
    assert spec.feature_columns == ("a", "b"), "every non-target column should be a feature"
    assert spec.input_shape == (2,) and spec.kind == "tabular", "a user table is tabular"
    assert spec.classes == ("setosa", "versicolor", "virginica"), "classes should be the sorted labels"
    x, y = table_to_arrays(_iris_like(), spec)
    assert x.dtype == np.float32 and x.shape == (6, 2), "features should be float32 N x F"
    assert y.dtype == np.int64, "labels should be int64 class indices"
    assert y.tolist() == [0, 2, 0, 1, 2, 0], "labels should map to their index in spec.labels"


def test_csv_spec__missing_target_column_fails_naming_it_and_the_columns_there_are():
    with pytest.raises(DataError, match=r"prepare\.csv\.target: no column 'label'.*\['a', 'b', 'species'\]"):
        csv_spec(_iris_like(), "label", "iris")


def test_csv_spec__table_with_only_the_target_fails():
    with pytest.raises(DataError, match="no feature columns besides the target 'y'"):
        csv_spec(pd.DataFrame({"y": [0, 1]}), "y", "empty")


def test_csv_spec__features_are_the_ones_chosen_in_their_order_or_all_but_the_dropped():
    frame = _iris_like().assign(note=["x"] * 6)
    assert csv_spec(frame, "species", "iris", features=["b", "a"]).feature_columns == ("b", "a")
    assert csv_spec(frame, "species", "iris", drop=["note"]).feature_columns == ("a", "b")
    with pytest.raises(DataError, match="once \\['a', 'b', 'note'\\] are dropped"):
        csv_spec(frame, "species", "iris", drop=["a", "b", "note"])


@pytest.mark.parametrize("key", ["features", "drop"])
def test_csv_spec__a_chosen_column_the_header_lacks_is_named_with_the_key(key):
    with pytest.raises(DataError, match=rf"prepare\.csv\.{key}: no column 'c'.*\['a', 'b', 'species'\]"):
        csv_spec(_iris_like(), "species", "iris", **{key: ["a", "c"]})


def test_table_to_arrays__label_outside_the_spec_fails_naming_column_and_value():
    # given a spec learned from one table and a table with a new label
    spec = csv_spec(_iris_like(), "species", "iris")
    frame = _iris_like()
    frame.loc[2, "species"] = "unknown_flower"
    # when / then the error names the column and the unexpected label
    with pytest.raises(DataError, match=r"'species'.*unknown_flower"):
        table_to_arrays(frame, spec)


def test_dataset_spec_round_trips_through_json():
    _, digits = builtin_table(PrepareConfig(source="digits"))
    user = csv_spec(_iris_like(), "species", "iris")
    for spec in (digits, user):
        restored = DatasetSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
        assert restored == spec, f"{spec.name} spec should survive a JSON round trip"


# ---------------------------------------------------------------------------------------------
# stratified split
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def imbalanced() -> tuple[np.ndarray, np.ndarray]:
    """400 rows, 4 classes in proportions 10/20/30/40 %, x[i] == i so rows can be traced."""
    y = np.repeat(np.arange(4), [40, 80, 120, 160])
    np.random.default_rng(0).shuffle(y)
    return np.arange(len(y), dtype=np.float32).reshape(-1, 1), y


def test_stratified_split_sizes_follow_the_fractions_of_the_whole_set(imbalanced):
    x, y = imbalanced
    splits = stratified_split(x, y, val_fraction=0.15, test_fraction=0.2, seed=0)
    assert len(splits.test) == 80, f"test should be 20% of 400 rows, got {len(splits.test)}"
    assert len(splits.val) == 60, f"val should be 15% of all 400 rows, got {len(splits.val)}"
    assert len(splits.train) == 260, f"train should hold the remaining 260, got {len(splits.train)}"


def test_stratified_split_parts_are_disjoint_and_cover_every_row(imbalanced):
    x, y = imbalanced
    splits = stratified_split(x, y, 0.15, 0.2, seed=0)
    ids = [set(part.x[:, 0].astype(int)) for part in (splits.train, splits.val, splits.test)]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2]), "splits should not share rows"
    assert set.union(*ids) == set(range(len(y))), "splits together should hold every row"
    for part in (splits.train, splits.val, splits.test):
        assert np.array_equal(part.y, y[part.x[:, 0].astype(int)]), "each row should keep its label"


def test_stratified_split_keeps_class_proportions(imbalanced):
    x, y = imbalanced
    overall = np.bincount(y) / len(y)
    splits = stratified_split(x, y, 0.15, 0.2, seed=0)
    for name, part in zip(("train", "val", "test"), (splits.train, splits.val, splits.test), strict=True):
        counts = np.bincount(part.y, minlength=4)
        expected = overall * len(part)
        assert np.all(np.abs(counts - expected) <= 1), (
            f"{name} should hold each class in the overall proportion (±1 row): "
            f"got {counts.tolist()}, expected {expected.tolist()}"
        )


def test_stratified_split_is_reproducible_for_a_seed_and_varies_across_seeds(imbalanced):
    x, y = imbalanced
    first, again = (stratified_split(x, y, 0.15, 0.2, seed=7) for _ in range(2))
    other = stratified_split(x, y, 0.15, 0.2, seed=8)
    for a, b in zip((first.train, first.val, first.test), (again.train, again.val, again.test),
                    strict=True):
        assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y), "same seed should give the same split"
    assert not np.array_equal(first.test.x, other.test.x), "another seed should give another split"


# ---------------------------------------------------------------------------------------------
# normalization
# ---------------------------------------------------------------------------------------------
def test_normalize_splits_fits_on_train_only():
    # given splits whose train part has a different distribution from val/test
    rng = np.random.default_rng(0)
    train = Split((rng.normal(5.0, 2.0, (200, 3))).astype(np.float32), np.zeros(200, np.int64))
    val = Split((rng.normal(-5.0, 9.0, (50, 3))).astype(np.float32), np.zeros(50, np.int64))
    test = Split((rng.normal(40.0, 1.0, (50, 3))).astype(np.float32), np.zeros(50, np.int64))
    # when they are normalized
    normalized, normalizer = normalize_splits(Splits(train, val, test), "tabular")
    # then the statistics are exactly the train split's
    np.testing.assert_allclose(normalizer.mean, train.x.mean(0), rtol=1e-5,
                               err_msg="mean should be the train split's")
    np.testing.assert_allclose(normalizer.std, train.x.std(0), rtol=1e-5,
                               err_msg="std should be the train split's")
    # and train becomes standard while val/test are transformed with the same (train) statistics
    np.testing.assert_allclose(normalized.train.x.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(normalized.train.x.std(0), 1, atol=1e-4)
    np.testing.assert_allclose(normalized.test.x, (test.x - normalizer.mean) / normalizer.std, rtol=1e-5)
    assert normalized.test.x.mean() > 10, "test data should not be re-centred with its own mean"
    assert normalized.val.y is val.y or np.array_equal(normalized.val.y, val.y), "labels stay as they are"


def test_normalizer_is_per_feature_for_tables():
    rng = np.random.default_rng(0)
    scales = np.array([1.0, 100.0, 1000.0])
    x = (rng.standard_normal((300, 3)) * scales + [0, 5, -7]).astype(np.float32)
    normalizer = Normalizer.fit(x, "tabular")
    assert normalizer.mean.shape == (3,) and normalizer.std.shape == (3,), "one statistic per feature"
    np.testing.assert_allclose(normalizer.std / scales, 1, atol=0.15,
                               err_msg="each feature should get its own scale")
    np.testing.assert_allclose(normalizer(x).std(0), 1, atol=1e-4)


def test_normalizer_is_per_channel_for_images():
    # given 2-channel images: channel 1 is ten times the scale of channel 0, and pixel (0, 0) of
    # channel 0 varies ten times more than the other pixels
    rng = np.random.default_rng(0)
    x = rng.standard_normal((100, 2, 8, 8)).astype(np.float32)
    x[:, 1] = 10 * x[:, 1] + 3
    x[:, 0, 0, 0] *= 10
    normalizer = Normalizer.fit(x, "image")
    # then there is one mean/std per channel (not per pixel) ...
    assert normalizer.mean.shape == (2, 1, 1), f"per-channel stats expected, got {normalizer.mean.shape}"
    np.testing.assert_allclose(normalizer.mean.ravel(), x.mean(axis=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(normalizer.std.ravel(), x.std(axis=(0, 2, 3)), rtol=1e-4)
    # ... so the spatial structure survives: the noisy pixel stays noisier than its neighbours
    out = normalizer(x)
    assert out.shape == x.shape and out.dtype == np.float32, "normalizing keeps shape, gives float32"
    assert out[:, 0, 0, 0].std() > 5 * out[:, 0, 1, 1].std(), "per-pixel variance should be preserved"
    np.testing.assert_allclose(out[:, 1].std(), 1, atol=1e-3)


def test_normalizer_is_per_channel_for_signals():
    rng = np.random.default_rng(0)
    x = (4 * rng.standard_normal((100, 1, 40)) + 2).astype(np.float32)
    normalizer = Normalizer.fit(x, "signal")
    assert normalizer.mean.shape == (1, 1), f"one statistic per channel expected, got {normalizer.mean.shape}"
    out = normalizer(x)
    assert out.shape == x.shape, "normalizing keeps the signal shape"
    np.testing.assert_allclose([out.mean(), out.std()], [0, 1], atol=1e-4)


def test_normalizer__constant_feature_gets_std_1_and_becomes_zero():
    x = np.random.default_rng(0).standard_normal((200, 3)).astype(np.float32)
    x[:, 1] = 3.0
    normalizer = Normalizer.fit(x, "tabular")
    assert normalizer.std[1] == 1.0, f"a constant feature should get std 1, got {normalizer.std[1]}"
    out = normalizer(x)
    assert np.all(np.isfinite(out)), "a constant feature should not produce inf/nan"
    assert np.all(out[:, 1] == 0), "a constant feature should become 0"


def test_normalizer__constant_non_round_feature_gets_std_1():
    x = np.random.default_rng(0).standard_normal((300, 2)).astype(np.float32)
    x[:, 0] = 123.456
    normalizer = Normalizer.fit(x, "tabular")
    assert normalizer.std[0] == 1.0, f"a constant feature should get std 1, got {normalizer.std[0]}"


def test_normalizer_round_trips_through_json():
    x = np.random.default_rng(0).standard_normal((50, 1, 8, 8)).astype(np.float32) * 3 + 1
    normalizer = Normalizer.fit(x, "image")
    restored = Normalizer.from_dict(json.loads(json.dumps(normalizer.to_dict())))
    assert restored.mean.dtype == np.float32 and restored.mean.shape == normalizer.mean.shape, (
        "the restored statistics should keep dtype and shape"
    )
    np.testing.assert_array_equal(restored(x), normalizer(x), err_msg="same transform after a round trip")


# ---------------------------------------------------------------------------------------------
# augmentation
# ---------------------------------------------------------------------------------------------
def _images(n: int = 16) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(0).standard_normal((n, 1, 8, 8)).astype(np.float32))


def _signals(n: int = 16) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(1).standard_normal((n, 1, 40)).astype(np.float32))


def _augmenter(kind: str, seed: int = 0, **cfg) -> Augmenter:
    return Augmenter(AugmentConfig(**cfg), kind, torch.Generator().manual_seed(seed))


def test_augmenter_is_a_no_op_for_tables():
    x = torch.randn(8, 30)
    out = _augmenter("tabular", max_shift=3, noise_std=1.0)(x)
    assert torch.equal(out, x), "tabular data should never be augmented"


@pytest.mark.parametrize("kind", ["image", "signal"])
def test_augmenter_is_a_no_op_when_disabled(kind):
    x = _images() if kind == "image" else _signals()
    out = _augmenter(kind, enabled=False)(x)
    assert torch.equal(out, x), f"disabled augmentation should leave {kind} batches unchanged"


@pytest.mark.parametrize(("kind", "shape"), [("image", (16, 1, 8, 8)), ("signal", (16, 1, 40))])
def test_augmenter_keeps_shape_and_dtype_and_changes_the_data(kind, shape):
    x = _images() if kind == "image" else _signals()
    out = _augmenter(kind)(x)
    assert tuple(out.shape) == shape and out.dtype == x.dtype, f"{kind} shape/dtype should be kept"
    assert not torch.allclose(out, x, atol=1e-3), f"enabled augmentation should change {kind} batches"
    assert torch.isfinite(out).all(), "augmented data should stay finite"


@pytest.mark.parametrize("kind", ["image", "signal"])
def test_augmenter_is_deterministic_for_a_generator_seed(kind):
    x = _images() if kind == "image" else _signals()
    first, again, other = (_augmenter(kind, seed)(x) for seed in (5, 5, 6))
    assert torch.equal(first, again), "the same generator seed should give the same augmentation"
    assert not torch.equal(first, other), "another seed should give another augmentation"


def test_augmenter__identity_settings_reproduce_images():
    # given augmentation that is enabled but with zero shift, rotation and noise
    x = _images()
    out = _augmenter("image", max_shift=0, max_rotation_deg=0.0, noise_std=0.0)(x)
    # then the affine resampling is the identity (pixel centres map onto themselves)
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)


def test_augmenter__signal_shift_is_an_edge_padded_integer_shift():
    # given a noise-free signal augmentation with shifts of up to 2 samples
    x = _signals()
    out = _augmenter("signal", max_shift=2, noise_std=0.0)(x)
    # then every row equals its input shifted by some s in [-2, 2], repeating the end value
    shifts_seen = set()
    for row_in, row_out in zip(x[:, 0], out[:, 0], strict=True):
        matches = []
        for s in range(-2, 3):
            positions = (torch.arange(40) - s).clamp(0, 39)
            if torch.equal(row_out, row_in[positions]):
                matches.append(s)
        assert matches, "each augmented signal should be an edge-padded shift of its input"
        shifts_seen.update(matches)
    assert len(shifts_seen) > 1, "different rows should get different shifts"


def test_augmenter__noise_has_the_configured_scale():
    x = torch.zeros(64, 1, 40)
    out = _augmenter("signal", max_shift=0, noise_std=0.5)(x)
    assert abs(float(out.std()) - 0.5) < 0.05, f"noise std should be about 0.5, got {float(out.std())}"


# ---------------------------------------------------------------------------------------------
# loaders
# ---------------------------------------------------------------------------------------------
def test_make_loader_batches_every_sample_and_shuffles_reproducibly():
    split = Split(np.arange(50, dtype=np.float32).reshape(50, 1), np.arange(50) % 3)
    order = [torch.cat([xb for xb, _ in make_loader(split, 16, shuffle=True, seed=s)]).ravel().tolist()
             for s in (1, 1, 2)]
    assert sorted(order[0]) == list(range(50)), "one epoch should yield every sample once"
    assert order[0] == order[1], "the same seed should give the same order"
    assert order[0] != order[2], "another seed should give another order"
    plain = torch.cat([xb for xb, _ in make_loader(split, 16, shuffle=False)]).ravel().tolist()
    assert plain == list(range(50)), "without shuffling the order should be kept"


# ---------------------------------------------------------------------------------------------
# unlabeled inputs
# ---------------------------------------------------------------------------------------------
def test_mnist1d_unlabeled_is_reproducible_and_shares_no_signal_with_the_labeled_table(monkeypatch):
    _forbid_network(monkeypatch)
    cfg = PrepareConfig(source="mnist1d", mnist1d_samples=200, seed=3)
    labeled, spec = builtin_table(cfg)
    pool = mnist1d_unlabeled(300, seed=3)
    assert list(pool.columns) == list(spec.feature_columns), "the feature columns, no label"
    pd.testing.assert_frame_equal(pool, mnist1d_unlabeled(300, seed=3))
    shared = pool.merge(labeled[list(spec.feature_columns)], how="inner")
    assert shared.empty, "the pool is drawn apart from the labeled signals"


def test_with_unlabeled_appends_rows_labeled_unlabeled():
    split = Split(np.zeros((3, 1, 4), np.float32), np.array([0, 1, 2]))
    joined = with_unlabeled(split, np.ones((2, 1, 4), np.float64))
    assert joined.x.shape == (5, 1, 4) and joined.x.dtype == np.float32
    assert joined.y.tolist() == [0, 1, 2, UNLABELED, UNLABELED]
    assert with_unlabeled(split, None) is split


def test_with_unlabeled__inputs_of_another_shape_fail_naming_both():
    split = Split(np.zeros((3, 1, 4), np.float32), np.array([0, 1, 2]))
    with pytest.raises(DataError, match=r"\(1, 5\).*\(1, 4\)"):
        with_unlabeled(split, np.ones((2, 1, 5), np.float32))


def test_rows_found_in__marks_the_rows_that_occur_among_the_others():
    # given five 2x2 images, two of which (rows 1 and 3) occur among the others, in another order
    rows = np.arange(20, dtype=np.float32).reshape(5, 1, 2, 2)
    others = np.concatenate([rows[[3, 1]], rows[:1] + 0.5])
    # when / then exactly those rows are found
    assert rows_found_in(rows, others).tolist() == [False, True, False, True, False]


def test_rows_found_in__compares_whole_rows_by_exact_value():
    # given one row, and candidates: itself, itself with -0.0, its last value one float32 step
    # away, its values in another order, and itself as integers
    others = np.array([[0.0, 1.0, 2.0]], np.float32)
    step = np.nextafter(np.float32(2.0), np.float32(3.0))
    candidates = np.array([[0.0, 1.0, 2.0], [-0.0, 1.0, 2.0], [0.0, 1.0, step], [2.0, 1.0, 0.0]],
                          np.float32)
    # when they are looked up
    found = rows_found_in(candidates, others).tolist()
    integers = rows_found_in(np.array([[0, 1, 2]]), others).tolist()
    # then equal values match whatever their bytes or dtype; a near miss or a permutation does not
    assert found == [True, True, False, False]
    assert integers == [True]


def test_rows_found_in__no_rows_on_either_side_finds_nothing():
    rows = np.ones((3, 4), np.float32)
    assert rows_found_in(rows, np.empty((0, 4), np.float32)).tolist() == [False] * 3
    assert rows_found_in(np.empty((0, 4), np.float32), rows).shape == (0,)


def test_rows_found_in__rows_of_another_shape_fail_naming_both():
    with pytest.raises(DataError, match=r"\(1, 5\).*\(1, 4\)"):
        rows_found_in(np.ones((2, 1, 5)), np.ones((2, 1, 4)))


def test_sample_rows_keeps_the_class_shares_and_is_seeded():
    from shrinkflow.data import sample_rows

    y = np.repeat([0, 1, 2], [600, 300, 100])
    split = Split(np.arange(1000, dtype=np.float32)[:, None], y)
    sampled = sample_rows(split, 100, seed=0)
    assert np.bincount(sampled.y).tolist() == [60, 30, 10]
    assert np.array_equal(sampled.x, sample_rows(split, 100, seed=0).x)
    assert np.all(np.diff(sampled.x[:, 0]) > 0), "rows keep their order"
    assert sample_rows(split, None, seed=0) is split and sample_rows(split, 5000, seed=0) is split

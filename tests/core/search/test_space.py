"""The search space: parsing and validation of `search.space`, grids, and applying a trial."""

from __future__ import annotations

import pytest

from shrinkflow.config import ConfigError, Params, load_params
from shrinkflow.search import space

REPO_PARAMS = "params.yaml"


def _params(**search) -> Params:
    return Params.model_validate({"search": search})


def test_baseline_values_are_always_in_the_space():
    params = _params(space={"model": {"width": [16, 48], "dropout": {"low": 0.2, "high": 0.3}},
                            "train": {"lr": {"low": 0.01, "high": 0.1, "log": True}}})
    dims = space.dimensions(params.search, params.baseline)
    assert dims["model.width"] == (64, 16, 48)  # the baseline's 64 comes first
    assert dims["model.dropout"].low == params.baseline.model.dropout  # 0.1 widens the range
    assert dims["train.lr"].low == params.baseline.train.lr
    assert space.current(dims, params.baseline) == {
        "model.width": 64, "model.dropout": 0.1, "train.lr": 0.003}


def test_grid_spreads_ranges_and_keeps_integers_whole():
    params = _params(grid_points=3, space={
        "model": {"depth": {"low": 1, "high": 4}, "width": [32, 64]},
        "train": {"lr": {"low": 0.001, "high": 0.1, "log": True},
                  "weight_decay": {"low": 0.0, "high": 0.001, "step": 0.0005}}})
    dims = space.dimensions(params.search, params.baseline)
    grid = space.grid(dims, 3, space.current(dims, params.baseline))
    assert grid["model.width"] == [32, 64]
    assert grid["model.depth"] == [1, 2, 4]
    assert all(isinstance(value, int) for value in grid["model.depth"])
    # params.yaml's own values join the grid (lr 0.003, weight decay 0.0001)
    assert grid["train.lr"] == pytest.approx([0.001, 0.003, 0.01, 0.1])
    assert grid["train.weight_decay"] == pytest.approx([0.0, 0.0001, 0.0005, 0.001])


def test_apply_sets_dotted_keys_and_train_overrides():
    params = _params()
    applied = space.apply(params.baseline, {"model.width": 8, "augment.noise_std": 0.0}, epochs=3)
    assert (applied.model.width, applied.augment.noise_std, applied.train.epochs) == (8, 0.0, 3)
    assert params.baseline.model.width == 64  # the original is untouched (frozen)


@pytest.mark.parametrize(("override", "named"), [
    ("search.space={model: {widht: [8]}}", "search.space.model.widht"),
    ("search.space={model: {width: [0]}}", "search.space.model.width: 0"),
    ("search.space={optimizer: {lr: [1]}}", "search.space.optimizer"),
    ("search.space={train: {lr: {low: 0, high: 1, log: true}}}", "log range needs low > 0"),
    ("search.space={train: {lr: {low: 0.1, high: 0.01}}}", "below low"),
    ("search.objectives=[val_accuracy, params]", "search.pruner: none"),
    ("search.objectives=[params]", "starts with val_accuracy"),
    ("search.sampler=annealing", "search.sampler"),
])
def test_bad_search_settings_name_the_key(override, named):
    with pytest.raises(ConfigError, match="search") as error:
        load_params(REPO_PARAMS, overrides=[override])
    assert named in str(error.value)


def test_the_shipped_space_is_valid_and_holds_the_baseline():
    params = load_params(REPO_PARAMS)
    dims = space.dimensions(params.search, params.baseline)
    assert dims and space.current(dims, params.baseline)


def test_a_space_given_whole_replaces_the_default_one(tmp_path):
    whole = load_params(REPO_PARAMS, overrides=["search.space={train: {lr: [0.01]}}"])
    assert space.dimensions(whole.search, whole.baseline) == {"train.lr": (0.003, 0.01)}
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("search:\n  space:\n    model:\n      depth: [1, 2]\n")
    from_file = load_params(REPO_PARAMS, [overlay])
    assert list(from_file.search.space) == ["model"] and list(from_file.search.space["model"]) == ["depth"]
    # one key set on its own changes that key and keeps the rest
    one = load_params(REPO_PARAMS, overrides=["search.space.train.lr=[0.01]"])
    default = load_params(REPO_PARAMS)
    assert one.search.space["model"] == default.search.space["model"]
    assert one.search.space["train"]["lr"] == (0.01,)


"""shrinkflow.config: loading, overlaying, overriding and validating params.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from shrinkflow.config import (
    ConfigError,
    MeasureConfig,
    Params,
    Range,
    TrainConfig,
    flatten,
    load_params,
    parse_override,
)

REPO = Path(__file__).resolve().parents[2]
PARAMS = REPO / "params.yaml"
OVERLAYS = sorted((REPO / "configs").glob("*.yaml"))
INVALID = sorted((REPO / "tests" / "configs" / "invalid").glob("*.yaml"))


def _flat_yaml(data: dict, prefix: str = "") -> dict:
    flat: dict = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flat_yaml(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _expected_fragment(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name} should start with '# expect: <fragment>'"
    return first.removeprefix("# expect: ").strip()


# ---------------------------------------------------------------------------------------------
# the files shipped with the repository
# ---------------------------------------------------------------------------------------------
def test_repo_params_yaml_loads_into_frozen_params():
    # given the params.yaml at the repository root
    # when it is loaded
    params = load_params(PARAMS)
    # then it validates and holds the documented default source and stage sections
    assert isinstance(params, Params), "load_params should return a Params model"
    assert params.prepare.source == "digits", "params.yaml should default to the digits source"
    assert params.baseline.train.epochs >= 1, "params.yaml should set a positive epoch count"


def _field_keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Every field of `model` as a dotted key, sections walked into; a range {low, high, ...}
    and a mapping whose keys are data (search.space, distill.extra_students) are one value."""
    keys: set[str] = set()
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel) and annotation is not Range:
            keys |= _field_keys(annotation, f"{prefix}{name}.")
        else:
            keys.add(f"{prefix}{name}")
    return keys


def _written_keys(data: dict, prefix: str = "") -> set[str]:
    """Every key written in a YAML mapping as a dotted key, mappings (even empty ones) included."""
    keys: set[str] = set()
    for key, value in data.items():
        keys.add(f"{prefix}{key}")
        if isinstance(value, dict):
            keys |= _written_keys(value, f"{prefix}{key}.")
    return keys


def test_params_yaml_states_the_code_defaults():
    # given the all-defaults model and params.yaml, what users and DVC run
    code, shipped = flatten(Params()), flatten(load_params(PARAMS))
    # then every key holds the same value in both (the type too: a range of ints searches
    # integers), so the defaults are stated once, in the code, and params.yaml shows them
    absent = "<absent>"
    differing = [f"{key}: code default {code.get(key, absent)!r}, params.yaml "
                 f"{shipped.get(key, absent)!r}"
                 for key in sorted(code.keys() | shipped.keys())
                 if repr(code.get(key, absent)) != repr(shipped.get(key, absent))]
    assert not differing, ("shrinkflow/config.py's defaults should be params.yaml's values; "
                           "they differ at:\n  " + "\n  ".join(differing))
    assert Params() == load_params(PARAMS), "Params() should equal the loaded params.yaml"


def test_params_yaml_documents_every_field():
    # given every field of the models and every key written in params.yaml
    fields = _field_keys(Params)
    written = _written_keys(yaml.safe_load(PARAMS.read_text()))
    # then each field appears in params.yaml (where its comment says what it does, and where
    # `dvc exp run -S key=...` can reach it), and params.yaml holds nothing the models do not know
    missing = sorted(fields - written)
    unknown = sorted(key for key in written  # a section, a field, or a key inside a field's value
                     if not any(key == f or key.startswith(f"{f}.") or f.startswith(f"{key}.")
                                for f in fields))
    assert not missing, f"params.yaml should state every field of shrinkflow/config.py; missing {missing}"
    assert not unknown, f"params.yaml should hold only keys the models accept; unknown {unknown}"


@pytest.mark.parametrize("overlay", OVERLAYS, ids=[path.name for path in OVERLAYS])
def test_every_shipped_overlay_loads_and_applies_its_values(overlay: Path):
    # given an example overlay from configs/
    overlay_values = _flat_yaml(yaml.safe_load(overlay.read_text()))
    # when it is merged onto params.yaml
    params = load_params(PARAMS, overlays=[overlay])
    # then every value it sets wins, and every key it does not set keeps params.yaml's value
    loaded, base = flatten(params), flatten(load_params(PARAMS))
    for key, value in overlay_values.items():
        shown = list(loaded[key]) if isinstance(loaded[key], tuple) else loaded[key]  # YAML lists
        assert shown == value, f"{overlay.name} should set {key} to {value!r}"
    for key in set(base) - set(overlay_values):
        assert loaded[key] == base[key], f"{key} should keep params.yaml's value under {overlay.name}"


def test_there_is_at_least_one_shipped_overlay():
    assert OVERLAYS, "configs/ should ship example overlays (configs/*.yaml)"


# ---------------------------------------------------------------------------------------------
# invalid configurations
# ---------------------------------------------------------------------------------------------
def test_invalid_config_folder_is_populated():
    assert len(INVALID) >= 4, "tests/configs/invalid/ should hold the invalid example configs"


@pytest.mark.parametrize("bad", INVALID, ids=[path.name for path in INVALID])
def test_each_invalid_config_fails_naming_the_file_and_the_problem(bad: Path):
    # given an invalid overlay whose first line says which key/problem must be named
    fragment = _expected_fragment(bad)
    # when it is overlaid on the valid params.yaml
    with pytest.raises(ConfigError) as caught:
        load_params(PARAMS, overlays=[bad])
    # then the error names the offending file and the key (or problem)
    message = str(caught.value)
    assert str(bad) in message, f"the error should name the file {bad.name}: {message}"
    assert fragment in message, f"the error should mention {fragment!r}: {message}"


@pytest.mark.parametrize("bad", INVALID, ids=[path.name for path in INVALID])
def test_each_invalid_config_also_fails_as_the_params_file_itself(bad: Path):
    # given an invalid file used directly as params.yaml (all other keys defaulted)
    fragment = _expected_fragment(bad)
    # when / then loading fails with a ConfigError mentioning the same problem
    with pytest.raises(ConfigError) as caught:
        load_params(bad)
    assert fragment in str(caught.value), f"the error should mention {fragment!r}: {caught.value}"


def test_load_params__unknown_top_level_key_fails_naming_it(tmp_path: Path):
    # given an overlay with a section that does not exist
    overlay = tmp_path / "typo.yaml"
    overlay.write_text("projekt:\n  experiment: x\n")
    # when / then loading fails naming the unknown key
    with pytest.raises(ConfigError, match=r"unknown key 'projekt'"):
        load_params(PARAMS, overlays=[overlay])


def test_load_params__unknown_nested_key_fails_naming_the_dotted_key():
    # given an override of a key that does not exist in its section
    # when / then loading fails naming the full dotted path
    with pytest.raises(ConfigError, match=r"unknown key 'baseline\.augment\.max_shfit'"):
        load_params(PARAMS, overrides=["baseline.augment.max_shfit=2"])


@pytest.mark.parametrize(
    ("assignment", "key"),
    [
        ("prepare.val_fraction=1.5", "prepare.val_fraction"),
        ("prepare.test_fraction=0", "prepare.test_fraction"),
        ("baseline.train.epochs=-1", "baseline.train.epochs"),
        ("prepare.source=nope", "prepare.source"),
        ("baseline.train.device=tpu", "baseline.train.device"),
        ("baseline.model.dropout=1.0", "baseline.model.dropout"),
        ("measure.repeats=2", "measure.repeats"),
        ("prepare.mnist1d_samples=10", "prepare.mnist1d_samples"),
    ],
)
def test_load_params__bad_value_fails_naming_the_key_and_the_value(assignment: str, key: str):
    # given an override with an out-of-range or unknown value
    # when / then loading fails naming the key and echoing the rejected value
    with pytest.raises(ConfigError) as caught:
        load_params(PARAMS, overrides=[assignment])
    message = str(caught.value)
    assert f"{key}:" in message, f"the error should name {key}: {message}"
    assert "got " in message, f"the error should echo the rejected value: {message}"
    assert f"--set {assignment}" in message, f"the error should name the override: {message}"


def test_load_params__reports_every_bad_key_at_once():
    # given two independent mistakes
    overrides = ["baseline.train.epochs=-1", "measure.threads=0"]
    # when / then one error lists both, so the user fixes them in one go
    with pytest.raises(ConfigError) as caught:
        load_params(PARAMS, overrides=overrides)
    message = str(caught.value)
    assert "baseline.train.epochs" in message and "measure.threads" in message, (
        f"the error should name every bad key: {message}"
    )


def test_load_params__csv_source_without_path_fails_naming_csv_path():
    # given the csv source but no csv.path
    # when / then validation fails and says which key to set
    with pytest.raises(ConfigError, match=r"prepare\.csv\.path"):
        load_params(PARAMS, overrides=["prepare.source=csv"])


def test_load_params__csv_source_with_path_is_accepted():
    # given the csv source with a path and a target column
    params = load_params(
        PARAMS, overrides=["prepare.source=csv", "prepare.csv.path=data/external/x.csv",
                           "prepare.csv.target=species"],
    )
    # then both keys are taken as given
    assert params.prepare.csv.path == "data/external/x.csv", "csv.path should be set"
    assert params.prepare.csv.target == "species", "csv.target should be set"


def test_load_params__missing_file_fails_naming_it(tmp_path: Path):
    missing = tmp_path / "nowhere.yaml"
    with pytest.raises(ConfigError, match="not found") as caught:
        load_params(missing)
    assert str(missing) in str(caught.value), "the error should name the missing file"


def test_load_params__missing_overlay_fails_naming_it(tmp_path: Path):
    missing = tmp_path / "overlay.yaml"
    with pytest.raises(ConfigError) as caught:
        load_params(PARAMS, overlays=[missing])
    assert str(missing) in str(caught.value), "the error should name the missing overlay"


@pytest.mark.parametrize("content", ["- a\n- b\n", "just a string\n", "42\n"])
def test_load_params__non_mapping_yaml_fails_naming_the_file(tmp_path: Path, content: str):
    # given a YAML document that is not a mapping of sections
    path = tmp_path / "params.yaml"
    path.write_text(content)
    # when / then the error names the file and says a mapping is needed
    with pytest.raises(ConfigError, match="mapping") as caught:
        load_params(path)
    assert str(path) in str(caught.value), "the error should name the file"


def test_load_params__empty_file_gives_the_defaults(tmp_path: Path):
    # given an empty params file (YAML null)
    path = tmp_path / "params.yaml"
    path.write_text("# nothing set\n")
    # then every value is the documented default
    assert load_params(path) == Params(), "an empty params file should mean all defaults"


# ---------------------------------------------------------------------------------------------
# --set overrides
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("assignment", "expected"),
    [
        ("baseline.train.lr=0.01", {"baseline": {"train": {"lr": 0.01}}}),
        ("baseline.train.epochs=5", {"baseline": {"train": {"epochs": 5}}}),
        ("baseline.train.amp=false", {"baseline": {"train": {"amp": False}}}),
        ("prepare.csv.path=null", {"prepare": {"csv": {"path": None}}}),
        ("prepare.source=mnist1d", {"prepare": {"source": "mnist1d"}}),
        ("project.experiment=a=b", {"project": {"experiment": "a=b"}}),
        (" measure.threads = 4", {"measure": {"threads": 4}}),
    ],
)
def test_parse_override_nests_the_dotted_key_and_parses_the_value_as_yaml(assignment, expected):
    result = parse_override(assignment)
    assert result == expected, f"{assignment!r} should parse to {expected}, got {result}"
    leaf = result
    while isinstance(leaf, dict):
        leaf = next(iter(leaf.values()))
    expected_leaf = expected
    while isinstance(expected_leaf, dict):
        expected_leaf = next(iter(expected_leaf.values()))
    assert type(leaf) is type(expected_leaf), f"{assignment!r} should give a {type(expected_leaf)}"


@pytest.mark.parametrize("assignment", ["baseline.train.lr", "=3", "  =3", ""])
def test_parse_override__malformed_assignment_fails_showing_the_expected_form(assignment):
    with pytest.raises(ConfigError, match=r"section\.key=value"):
        parse_override(assignment)


def test_load_params__overrides_change_the_value_and_keep_the_field_type():
    # given overrides of an int, a float, a bool and a literal
    params = load_params(PARAMS, overrides=[
        "baseline.train.epochs=7", "baseline.train.lr=0.05",
        "baseline.train.amp=false", "prepare.source=breast_cancer",
    ])
    # then each value changed and has the type of its field
    train = params.baseline.train
    assert train.epochs == 7 and type(train.epochs) is int, "epochs should become the int 7"
    assert train.lr == 0.05 and type(train.lr) is float, "lr should become the float 0.05"
    assert train.amp is False, "amp should become False"
    assert params.prepare.source == "breast_cancer", "source should become breast_cancer"
    # and untouched neighbours keep params.yaml's values
    assert train.batch_size == load_params(PARAMS).baseline.train.batch_size, (
        "keys that were not overridden should keep their value"
    )


@pytest.mark.parametrize(("text", "value"), [("1e-3", 0.001), ("5", 5.0), ("2.5e-4", 2.5e-4)])
def test_load_params__float_override_written_any_way_becomes_a_float(text: str, value: float):
    # given a float written in exponent form (YAML 1.1 reads '1e-3' as text) or as an int
    params = load_params(PARAMS, overrides=[f"baseline.train.lr={text}"])
    # then the field still holds a float of that value
    assert isinstance(params.baseline.train.lr, float), "lr should stay a float"
    assert params.baseline.train.lr == pytest.approx(value), f"lr={text} should mean {value}"


def test_load_params__numeric_looking_override_of_a_text_field_stays_text():
    # given a text field set to something that looks like a number
    params = load_params(PARAMS, overrides=["project.experiment=2024"])
    # then it is taken as the text the user typed
    assert params.project.experiment == "2024", "a text field should accept '2024' as text"


def test_load_params__override_wins_over_overlay():
    # given an overlay that sets epochs (configs/mnist1d.yaml) and an override of the same key
    overlay = REPO / "configs" / "mnist1d.yaml"
    from_overlay = load_params(PARAMS, overlays=[overlay]).baseline.train.epochs
    params = load_params(PARAMS, overlays=[overlay], overrides=[f"baseline.train.epochs={from_overlay + 1}"])
    # then the override, applied last, wins
    assert params.baseline.train.epochs == from_overlay + 1, "--set should win over an overlay"


def test_load_params__later_overlay_wins_over_earlier(tmp_path: Path):
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text("baseline:\n  train:\n    epochs: 3\n    batch_size: 16\n")
    second.write_text("baseline:\n  train:\n    epochs: 9\n")
    params = load_params(PARAMS, overlays=[first, second])
    assert params.baseline.train.epochs == 9, "the later overlay should win"
    assert params.baseline.train.batch_size == 16, "deep merge should keep the earlier overlay's other keys"


def test_load_params__does_not_modify_the_files(tmp_path: Path):
    # given a params file and an override
    path = tmp_path / "params.yaml"
    path.write_text(PARAMS.read_text())
    load_params(path, overrides=["baseline.train.epochs=1"])
    # then the file on disk is untouched (overrides are in memory only)
    assert path.read_text() == PARAMS.read_text(), "load_params should never write the file"


# ---------------------------------------------------------------------------------------------
# the models themselves
# ---------------------------------------------------------------------------------------------
def test_params_are_frozen():
    params = load_params(PARAMS)
    with pytest.raises(ValidationError):
        params.baseline.train.lr = 1.0  # type: ignore[misc]
    with pytest.raises(ValidationError):
        params.prepare = params.prepare  # type: ignore[misc]
    assert params.baseline.train.lr == load_params(PARAMS).baseline.train.lr, (
        "a failed assignment should leave the value unchanged"
    )


def test_sections_forbid_unknown_keys_when_built_directly():
    with pytest.raises(ValidationError, match="extra"):
        TrainConfig(epochz=3)  # type: ignore[call-arg]


def test_flatten_gives_dotted_leaf_keys_with_values():
    # given the default params
    flat = flatten(load_params(PARAMS))
    # then keys are dotted paths to leaves, values are the leaves
    assert flat["baseline.train.lr"] == load_params(PARAMS).baseline.train.lr, "lr should be flattened"
    assert flat["prepare.csv.path"] is None, "a null leaf should be kept as None"
    assert flat["prepare.validation.min_rows"] == 50, "three-level keys should be flattened"
    assert not any(isinstance(value, dict) for value in flat.values()), "no value should be a dict"
    assert "baseline" not in flat and "baseline.train" not in flat, "sections are not leaves"


def test_flatten_with_prefix_prefixes_every_key():
    flat = flatten(MeasureConfig(), prefix="measure.")
    assert set(flat) == {"measure.threads", "measure.warmup", "measure.repeats",
                         "measure.throughput_repeats", "measure.rounds"}, f"unexpected keys {sorted(flat)}"


def test_students_given_whole_replace_the_others():
    mnist1d = load_params(PARAMS, [PARAMS.parent / "configs" / "mnist1d.yaml"])
    assert list(mnist1d.distill.extra_students) == ["mlp", "tiny"]
    none = load_params(PARAMS, [PARAMS.parent / "configs" / "mnist1d.yaml"],
                       ["distill.extra_students={}"])
    assert none.distill.extra_students == {}


@pytest.mark.parametrize(("rows", "batch", "epochs", "patience"), [
    (1_167, 64, 60, 15),  # digits' training split: the budget as written
    (10_000, 64, 60, 15),
    (35_000, 128, 18, 5),  # 3.5x the reference rows
    (325_000, 1024, 2, 1),  # 32.5x: the batch at its cap
])
def test_a_training_budget_shrinks_its_epochs_as_the_table_grows(rows, batch, epochs, patience):
    from shrinkflow.config import TrainConfig

    resolved = TrainConfig().for_rows(rows)
    assert (resolved.batch_size, resolved.epochs, resolved.patience) == (batch, epochs, patience)


def test_a_budget_set_by_hand_is_kept():
    from shrinkflow.config import TrainConfig

    assert TrainConfig(batch_size=32).for_rows(325_000).batch_size == 32
    fixed = TrainConfig(reference_rows=None).for_rows(325_000)
    assert (fixed.batch_size, fixed.epochs, fixed.patience) == (64, 60, 15)

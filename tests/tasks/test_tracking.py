"""tasks.services.tracking: runs belong to their checkout; a killed run's leftovers are closed by the next;
the link to a pipeline run lists its runs (cached ones included) with one short filter."""

from __future__ import annotations

from pathlib import Path

from tasks.services import tracking


def _open_run(root: Path, experiment: str) -> str:
    from mlflow import MlflowClient

    experiment_id = tracking.experiment_id(root, experiment)
    return MlflowClient().create_run(experiment_id, tags={tracking.PROJECT_TAG: str(root)}).info.run_id


def test_fail_orphaned_runs__closes_this_checkouts_open_runs_only(tmp_path):
    from mlflow import MlflowClient

    # given: two checkouts sharing one store, each with a run left RUNNING (and one finished)
    mine, theirs = tmp_path / "mine", tmp_path / "theirs"
    experiment = "orphans"
    left_open, other_checkout = _open_run(mine, experiment), _open_run(theirs, experiment)
    finished = _open_run(mine, experiment)
    MlflowClient().set_terminated(finished, status="FINISHED")
    # when: this checkout's next run starts
    closed = tracking.fail_orphaned_runs(mine, experiment)
    # then: only its own open run is marked failed, with a note saying why
    client = MlflowClient()
    assert closed == [left_open]
    assert client.get_run(left_open).info.status == "FAILED"
    assert "died" in client.get_run(left_open).data.tags["shrinkflow.ended"]
    assert client.get_run(other_checkout).info.status == "RUNNING", "another checkout's run is left be"
    assert client.get_run(finished).info.status == "FINISHED"


# ---------------------------------------------------------------------------------------------
# run_link: one short filter on a tag lists a pipeline run's runs, cached reuses included
# ---------------------------------------------------------------------------------------------
def _filter_of(link: str) -> str:
    from urllib.parse import parse_qs, urlsplit

    return parse_qs(urlsplit(link).fragment.split("?", 1)[1])["searchFilter"][0]


def _listed(root: Path, link: str) -> set[str]:
    """The runs the link's runs table lists: the store searched with the link's filter."""
    store = tracking.client(root)
    experiments = [experiment.experiment_id for experiment in store.search_experiments()]
    return {run.info.run_id for run in store.search_runs(experiments, _filter_of(link),
                                                          max_results=1000)}


def _stage(params, root: Path, name: str, parent: str | None, candidates: int
           ) -> tuple[str, set[str]]:
    """A stage run with `candidates` candidate runs nested in it: its id, and its runs' ids."""
    with tracking.stage_run(name, params, root, parent) as stage:
        made = {stage.info.run_id}
        for number in range(candidates):
            with tracking.candidate_run(f"{name}-{number}", {"method": name}) as candidate:
                made.add(candidate.info.run_id)
    return stage.info.run_id, made


def _pipeline(params, root: Path, stages: dict[str, int], reused: dict[str, str] | None = None
              ) -> tuple[str, dict[str, tuple[str, set[str]]]]:
    """A pipeline run with a stage run per entry of `stages` (name: candidates), or for a name
    in `reused`, that earlier stage run recorded as the cached one: its id and, by stage, the
    stage run's id and the ids of its runs."""
    made: dict[str, tuple[str, set[str]]] = {}
    reused = reused or {}
    with tracking.pipeline_run(params, root) as parent:
        for name, candidates in stages.items():
            if name in reused:
                run_id = reused[name]
            else:
                made[name] = _stage(params, root, name, parent.run_id, candidates)
                run_id = made[name][0]
            parent.record({"stage": name, "metrics": {}, "run_id": run_id, "dataset": "digits"})
    return parent.run_id, made


def test_run_link__a_pipeline_run_lists_its_runs_with_one_short_filter(tmp_path):
    from shrinkflow.config import Params

    # given: a pipeline run with three stages and 60 candidates, and another pipeline run
    params = Params(project={"experiment": "link-short"})
    parent, made = _pipeline(params, tmp_path, {"prune": 20, "distill": 20, "quantize": 20})
    other, _ = _pipeline(params, tmp_path, {"prune": 3})
    # when
    link = tracking.run_link(tmp_path, parent)
    # then: the link filters on the pipeline run's tag, in a few hundred characters
    assert _filter_of(link) == f"tags.`{tracking.PIPELINE_RUN_TAG}` LIKE '%{parent}%'"
    assert len(link) < 400, f"{len(link)} characters: {link}"
    # and: searching the store with that filter gives exactly the pipeline run's runs
    assert _listed(tmp_path, link) == {parent, *(run for _, runs in made.values() for run in runs)}
    assert other not in _listed(tmp_path, link)


def test_run_link__a_cached_rerun_lists_the_earlier_runs_it_reused(tmp_path):
    from shrinkflow.config import Params

    # given: a first pipeline run, then a second one whose prune stage came from the cache
    params = Params(project={"experiment": "link-cached"})
    first, first_made = _pipeline(params, tmp_path, {"prune": 4, "distill": 3})
    reused = first_made["prune"][0]
    second, second_made = _pipeline(params, tmp_path, {"prune": 4, "distill": 3},
                                    reused={"prune": reused})
    # when / then: the second's link lists the reused prune runs and its own distill runs
    assert _listed(tmp_path, tracking.run_link(tmp_path, second)) == \
        {second, *first_made["prune"][1], *second_made["distill"][1]}
    # and: the first's link still lists what it made, and nothing of the second
    assert _listed(tmp_path, tracking.run_link(tmp_path, first)) == \
        {first, *first_made["prune"][1], *first_made["distill"][1]}
    # and: the reused runs name the pipeline run that made them first
    tag = tracking.client(tmp_path).get_run(reused).data.tags[tracking.PIPELINE_RUN_TAG]
    assert tag == f"{first} {second}"


def test_run_link__a_stage_run_lists_its_candidates_and_tags_itself_outside_a_pipeline(tmp_path):
    from shrinkflow.config import Params

    # given: a stage run outside any pipeline run (`shrinkflow stage NAME`), with candidates
    params = Params(project={"experiment": "link-stage"})
    stage, made = _stage(params, tmp_path, "quantize", None, 5)
    # then: it is its own pipeline run, and its candidates say so too
    store = tracking.client(tmp_path)
    assert {store.get_run(each).data.tags[tracking.PIPELINE_RUN_TAG] for each in made} == {stage}
    # and: its link filters on its stage tag and lists it and its candidates
    link = tracking.run_link(tmp_path, stage)
    assert _filter_of(link) == f"tags.`{tracking.STAGE_RUN_TAG}` = '{stage}'"
    assert _listed(tmp_path, link) == made


def test_run_link__a_run_without_nested_runs_opens_its_own_page(tmp_path):
    from shrinkflow.config import Params

    params = Params(project={"experiment": "link-alone"})
    stage, _ = _stage(params, tmp_path, "prepare", None, 0)
    assert tracking.run_link(tmp_path, stage).endswith(f"/runs/{stage}")


def test_a_long_reused_run_keeps_its_maker_and_the_latest_reusers():
    # given: a run's pipeline tag at MLflow's limit on a tag's value
    ids = [f"{number:032x}" for number in range(400)]
    listed = ""
    for each in ids:
        listed = tracking._with_pipeline_run(listed, each)
    # then: it stays within the limit, the maker first, the latest reuser last
    kept = listed.split()
    assert len(listed) <= tracking.MAX_TAG_VALUE
    assert kept[0] == ids[0] and kept[-1] == ids[-1] and kept[1:] == ids[-(len(kept) - 1):]
    assert tracking._with_pipeline_run(listed, ids[-1]) == listed, "an id listed is not added again"

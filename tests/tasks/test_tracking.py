"""tasks.tracking: runs belong to their checkout; a killed run's leftovers are closed by the next."""

from __future__ import annotations

from pathlib import Path

from tasks import tracking


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

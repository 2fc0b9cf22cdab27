"""The MLflow UI in a real browser, on the store of the session's reference pipeline run.

The link the pipeline prints must open this run's stages and candidates (MLflow 3.17 opens an
experiment on a GenAI overview otherwise); candidates selected there compare side by side with
the params that made them and their metrics; the registered model shows its `champion` alias.

The UI is `shrinkflow ui` (what `make ui` runs) on the reference project; the browser is headless
Chromium (or Chrome) with its chromedriver, driven by Selenium. `make browser` installs both with
apt-get. Without them the test is skipped, except in CI (CI=true, or .ci/run's
SHRINKFLOW_REQUIRE_BROWSER=1), where it fails. The module only reads the store, so it holds
whatever the modules before it ran. Screenshots of the runs table, the compare view and the model
page go to the reference project's reports/ui/ and are copied to this checkout's reports/ui/
(git-ignored), where a person or CI can look at them.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from tasks.services import tracking
from tests.services import answers, free_port, service, service_env, skip_or_fail

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the test interpreter's bin/: shrinkflow
LOCAL_UI = "http://127.0.0.1:5000"  # where the printed link points for a local store (`make ui`)
KEPT = REPO / "reports" / "ui"  # the screenshots' copy for a person or CI to look at (git-ignored)
WAIT_S = 60  # for one page to show what is checked; a cold UI on a busy 2-core machine takes ~10 s
BROWSERS = ("chromium", "google-chrome")  # Debian's package; GitHub's runners come with Chrome


def _browser() -> tuple[str, str]:
    """The browser and chromedriver on PATH; without them a skip, or a failure in CI."""
    binary = next(filter(None, map(shutil.which, BROWSERS)), None)
    driver = shutil.which("chromedriver")
    if binary and driver:
        return binary, driver
    skip_or_fail(f"no {' or '.join(BROWSERS)} with chromedriver on PATH (install them: make "
                 "browser)", "SHRINKFLOW_REQUIRE_BROWSER")


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """Headless Chromium, tall enough that the runs table renders all of the reference's rows
    (it renders only the rows in view) and that the compare view's screenshot reaches its metrics."""
    binary, driver_path = _browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless", "--no-sandbox", "--disable-gpu", "--window-size=1600,2400",
                     f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(argument)
    # an explicit driver path: Selenium Manager (which would download one) stays out
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def mlflow_ui(reference, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`shrinkflow ui` on the reference project's store, on a free port; yields its URL."""
    project = reference["project"]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**service_env(), "MLFLOW_TRACKING_URI": tracking.tracking_uri(project)}  # the run's store
    command = [str(BIN / "shrinkflow"), "ui", "--host", "127.0.0.1", "--port", str(port)]
    with service(command, project, env, lambda: answers(f"{url}/health"),
                 tmp_path_factory.mktemp("mlflow-ui") / "ui.log"):
        yield url


@pytest.fixture(scope="module")
def shots(reference) -> list[Path]:
    """Where screenshots go: the reference project's reports/ui/, then KEPT; emptied first, so
    that no shot of an earlier session remains beside this one's."""
    folders = [reference["project"] / "reports" / "ui", KEPT]
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    return folders


def _wait(driver, condition: Callable, what: str):
    """Wait up to WAIT_S for `condition(driver)` to be truthy; on timeout fail, saying `what`
    the page did not show, with a screenshot of what it did show."""
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:  # an element read while the page re-renders goes stale: read again
        return WebDriverWait(driver, WAIT_S, ignored_exceptions=[StaleElementReferenceException]
                             ).until(condition)
    except TimeoutException:
        shot = KEPT / "failed.png"
        driver.save_screenshot(str(shot))
        pytest.fail(f"{driver.current_url} did not show {what} within {WAIT_S} s "
                    f"(screenshot: {shot})")


def _shot(driver, folders: list[Path], name: str) -> None:
    """A screenshot of what the browser shows, saved in the first folder and copied to the others."""
    first, *others = folders
    driver.save_screenshot(str(first / name))
    for folder in others:
        shutil.copy2(first / name, folder / name)


def _close_assistant(driver) -> None:
    """The MLflow Assistant panel opens beside every page: close it, the screenshots are of the page."""
    from selenium.webdriver.common.by import By

    for button in driver.find_elements(By.CSS_SELECTOR,
                                       "[data-component-id='mlflow.assistant.chat_panel.close']"):
        button.click()


# ---------------------------------------------------------------------------------------------
# What the store holds (read through MLflow's client, not through the code under test)
# ---------------------------------------------------------------------------------------------
def _runs_of_the_pipeline_run(store, result: dict) -> dict:
    """The pipeline run, its stage runs and the runs nested in those (candidates, trials)."""
    parent = store.get_run(result["run_id"])
    stages = [store.get_run(summary["run_id"]) for summary in result["stages"].values()]
    nested = [run for stage in stages for run in store.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{stage.info.run_id}'")]
    return {run.info.run_id: run for run in [parent, *stages, *nested]}


def _one_candidate_per_stage(runs: dict) -> list:
    """The first candidate (by name) of each stage that made candidates."""
    chosen: dict[str, object] = {}
    for run in sorted(runs.values(), key=lambda run: run.info.run_name):
        if run.data.tags.get(tracking.PIPELINE_TAG) == "candidate":
            chosen.setdefault(run.data.tags["mlflow.parentRunId"], run)
    return list(chosen.values())


# ---------------------------------------------------------------------------------------------
# What the pages show
# ---------------------------------------------------------------------------------------------
def _table_rows(driver) -> dict[str, str]:
    """Run id -> run name of the rows in the runs table."""
    from selenium.webdriver.common.by import By

    links = driver.find_elements(By.CSS_SELECTOR, ".ag-row[row-id] a[href*='/runs/']")
    return {link.get_attribute("href").rsplit("/", 1)[-1]: link.get_attribute("textContent")
            for link in links}


def _params_row(driver, key: str) -> list[str]:
    """The values of param `key` in the compare view, one per run (column)."""
    from selenium.webdriver.common.by import By

    row = driver.find_element(By.XPATH, f"//tr[th[normalize-space()='{key}']]")
    return [cell.get_attribute("textContent") for cell in row.find_elements(By.TAG_NAME, "td")]


def _metrics_row(driver, key: str) -> list[float]:
    """The values shown right of metric `key`'s name in the compare view, left to right."""
    from selenium.webdriver.common.by import By

    name = driver.find_element(By.XPATH, f"//a[@title='Plot chart'][normalize-space()='{key}']")
    top = name.rect["y"]
    cells = driver.find_elements(By.CSS_SELECTOR, "[role=grid] [role=rowgroup] > div > span")
    row = sorted((cell for cell in cells if abs(cell.rect["y"] - top) < name.rect["height"]),
                 key=lambda cell: cell.rect["x"])
    return [float(cell.get_attribute("textContent")) for cell in row]


def test_the_printed_link_opens_the_runs_to_compare_and_the_champion(reference, browser,
                                                                      mlflow_ui, shots):
    # (browser before mlflow_ui: without a browser the test stops before starting a server)
    from selenium.webdriver.common.by import By

    project, result = reference["project"], reference["result"]
    store = tracking.client(project)
    runs = _runs_of_the_pipeline_run(store, result)
    candidates = _one_candidate_per_stage(runs)
    assert len(candidates) >= 3, "prune, distill and quantize should each make candidates"

    # when: the link the pipeline printed is opened on the running UI
    link = result["links"]["pipeline"]
    assert link.startswith(f"{LOCAL_UI}/#/")
    browser.get(mlflow_ui + link.removeprefix(LOCAL_UI))

    # then: the runs table lists the pipeline run, its stages and everything nested in them
    expected = {run_id: run.info.run_name for run_id, run in runs.items()}
    _wait(browser, lambda driver: _table_rows(driver) == expected,
          f"the {len(expected)} runs of the pipeline run, and no other")

    # when: one candidate of each stage is selected and compared
    _close_assistant(browser)
    for run in candidates:
        browser.find_element(By.CSS_SELECTOR,
                             f".ag-row[row-id='{run.info.run_id}'] .ag-selection-checkbox input").click()
    _shot(browser, shots, "runs.png")
    _wait(browser, lambda driver: driver.find_elements(By.CSS_SELECTOR,
                                                       "[data-testid=runs-compare-button]"),
          "the compare button")[0].click()

    # then: the compare view holds exactly those runs ...
    _wait(browser, lambda driver: "/compare-runs" in driver.current_url, "the compare view")
    shown = json.loads(parse_qs(urlsplit(browser.current_url).fragment.split("?", 1)[1])["runs"][0])
    assert set(shown) == {run.info.run_id for run in candidates}
    order = [runs[run_id] for run_id in shown]  # the view's columns, left to right
    _wait(browser, lambda driver: driver.find_elements(By.XPATH, "//tr[th[normalize-space()='method']]"),
          "the candidates' params")
    # ... the params that made each (method, ratio, precision, ...) ...
    for key in sorted({key for run in order for key in run.data.params}):
        assert _params_row(browser, key) == [run.data.params.get(key, "") for run in order], key
    # ... and their metrics (shown rounded; the grid renders the first rows, alphabetically)
    for key in ("accuracy", "agreement"):
        assert _metrics_row(browser, key) == [
            pytest.approx(run.data.metrics[key], rel=5e-3, abs=1e-3) for run in order], key
    _shot(browser, shots, "compare.png")

    # when: the registered model is opened
    name = store.get_run(result["stages"]["deploy"]["run_id"]).data.tags["registered_model"]
    champion = store.get_model_version_by_alias(name, "champion").version
    browser.get(f"{mlflow_ui}/#/models/{name}")

    # then: the champion's version carries the alias
    _wait(browser, lambda driver: driver.find_elements(
        By.XPATH, f"//*[@role='row'][.//a[contains(@href, '/versions/{champion}')]]"
                  "//*[@title='champion']"), f"version {champion} of {name} as champion")
    _shot(browser, shots, "model.png")

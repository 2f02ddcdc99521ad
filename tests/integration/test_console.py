"""The web console in a real browser: Debian's Chromium, driven by Playwright, against a router
in front of a real llama.cpp replica on the local SLURM cluster (fake GPUs, real jobs).

Each test leaves a screenshot in ``results/console/`` (CI keeps the folder as an artefact);
``docs/images/`` holds two of them for the README. A script error on a page fails its test.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from slurm_llm import Deployment, ModelSpec, _debian, deploy
from slurm_llm._api_keys import KeysFile
from slurm_llm.router import ProbeConfig, RouterConfig, RouterThread
from tests.conftest import REPO
from tests.integration.helpers import wait_until

pytestmark = [pytest.mark.slurm, pytest.mark.llamacpp]

RESULTS = REPO / "results" / "console"
NAME = "console-smollm2"
MODEL = "smollm2"
ANSWER_S = 180_000  # ms: what a browser waits for an answer of the engine on two shared cores


@pytest.fixture(scope="module")
def replica(local_slurm: object, slurm_llm_home: Path) -> Iterator[Deployment]:
    """One replica on a whole node of the local cluster (its 4 fake GPUs), kept by a
    controller thread of this process."""
    spec = ModelSpec.preset("smollm2-135m", device="cuda", gpus_per_replica=4, gpus_per_node=4)
    with deploy(spec, replicas=1, executor="slurm", name=NAME, progress=False,
                timeout=180) as deployment:  # fmt: skip
        yield deployment


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """The keys file, an operator's key and a user's."""
    keys = KeysFile(tmp_path_factory.mktemp("console-keys") / "keys.toml")
    return keys.path, keys.add("operator", operator=True), keys.add("researcher")


@pytest.fixture(scope="module")
def router(
    replica: Deployment, keys: tuple[Path, str, str], slurm_llm_home: Path
) -> Iterator[RouterThread]:
    # A map-reduce's chunks queue for the replica's slots, each a long prefill on two shared
    # cores: a queue wait of over a minute is this machine's, not a fault.
    config = RouterConfig(keys_file=keys[0], probes=ProbeConfig(interval_s=0), deadline_s=300,
                          queue_timeout_s=300)  # fmt: skip
    with RouterThread(home=slurm_llm_home, deployment=NAME, config=config) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Chromium from Debian (installed here if missing: tests install what they use)."""
    _debian.ensure_packages(("chromium",), ("chromium",), RuntimeError, "the console's tests")
    chromium = shutil.which("chromium", path=_debian.SEARCH_PATH)
    assert chromium is not None
    RESULTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        launched = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser, router: RouterThread) -> Iterator[Page]:
    """A fresh browser profile on the console; script errors are collected and fail the test."""
    context = browser.new_context(base_url=router.url, viewport={"width": 1360, "height": 900})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    opened.on("dialog", lambda dialog: dialog.accept())  # the scale and stop confirmations
    opened.goto("/ui/")
    yield opened
    context.close()
    assert errors == [], f"script errors on the page: {errors}"


def use_key(page: Page, key: str, tab: str | None = None) -> None:
    """``key`` typed into the page, then ``tab`` opened, as a user does."""
    page.fill("#api-key", key)
    page.click("#key-form button")
    if tab is not None:
        page.click(f"button[data-tab={tab}]")


# Before a streamed answer: the piece counts the page has shown, one entry for each moment the
# answer being written grew (the browser hands mutations over in batches, once per task).
SHOWN_PIECES = """() => {
  window.shownPieces = [];
  new MutationObserver(() => {
    const writing = document.querySelector("#messages .assistant:last-child[data-pieces]");
    if (writing) window.shownPieces.push(Number(writing.dataset.pieces));
  }).observe(document.querySelector("#messages"),
             { subtree: true, childList: true, attributeFilter: ["data-pieces"] });
}"""


def snap(page: Page, name: str) -> None:
    page.screenshot(path=RESULTS / f"{name}.png", full_page=True)


def test_a_wrong_key_is_refused(page: Page) -> None:
    use_key(page, "sk-slurm-llm-wrong")
    expect(page.locator("#error")).to_contain_text("the API key is not valid")
    expect(page.locator("#model option")).to_have_count(0)
    snap(page, "wrong-key")


def test_a_streamed_chat_shows_tokens_arriving_and_stops_on_request(
    page: Page, keys: tuple[Path, str, str]
) -> None:
    use_key(page, keys[2])
    expect(page.locator("#model option")).to_have_count(1)
    page.fill("#max-tokens", "64")
    page.fill("#temperature", "0")  # the same long answer every time, never a two-word one
    page.fill("#prompt", "Count from 1 to 30, one number per line.")
    # The page itself notes each time the shown answer grows, so the check does not depend on
    # how fast this process polls a loaded machine.
    page.evaluate(SHOWN_PIECES)
    page.click("#send")
    expect(page.locator("#send")).to_be_enabled(timeout=ANSWER_S)
    answer = page.locator("#messages .assistant").last
    shown: list[int] = page.evaluate("window.shownPieces")
    expect(answer).not_to_have_class(re.compile("failed"))
    assert len(shown) >= 3, f"not shown as it arrived: {shown} {answer.inner_text()!r}"
    expect(answer.locator(".text")).not_to_be_empty()
    snap(page, "chat")

    page.fill("#max-tokens", "400")
    page.fill("#prompt", "Write a long story about a cluster that never sleeps.")
    page.click("#send")
    page.wait_for_function(
        "() => Number(document.querySelector('#messages .assistant:last-child')"
        "?.dataset.pieces) >= 3", timeout=ANSWER_S,
    )  # fmt: skip
    page.click("#stop")
    stopped = page.locator("#messages .assistant").last
    expect(stopped.locator(".note")).to_have_text("stopped")
    expect(page.locator("#send")).to_be_enabled()
    text = stopped.locator(".text").inner_text()
    page.wait_for_timeout(1000)
    assert stopped.locator(".text").inner_text() == text, "the answer went on after Stop"
    kept = page.locator("#messages .message").count()
    page.reload()  # the conversation is kept in the browser
    expect(page.locator("#messages .message")).to_have_count(kept)


def test_a_pasted_long_text_is_answered_in_chunks(page: Page, keys: tuple[Path, str, str]) -> None:
    use_key(page, keys[2])
    expect(page.locator("#model option")).to_have_count(1)
    page.click("#clear")
    facts = " ".join(
        f"Fact {i}: city {i} has {i * 7 % 13} bridges and a river named R{i}." for i in range(90)
    )
    page.fill("#long-text", facts)  # more than a slot's 1,024 tokens of context
    page.fill("#max-tokens", "32")
    page.fill("#prompt", "Summarise the facts in one sentence.")
    page.click("#send")
    note = page.locator("#messages .assistant .note").last
    expect(note).to_contain_text("map-reduce: ", timeout=ANSWER_S)
    chunks = int(re.search(r"(\d+) chunk", note.inner_text()).group(1))  # type: ignore[union-attr]
    assert chunks >= 2
    expect(page.locator("#messages .assistant .text").last).not_to_be_empty()
    page.fill("#long-text", "")


def test_a_tribunal_run_shows_each_rounds_verdicts(page: Page, keys: tuple[Path, str, str]) -> None:
    use_key(page, keys[1])
    expect(page.locator("#model option")).to_have_count(1)
    page.click("#clear")
    page.check("#tribunal")
    page.fill("#rounds", "1")
    page.fill("#max-tokens", "48")
    page.fill("#prompt", "In one sentence: why do clusters use a scheduler?")
    page.click("#send")
    run = page.locator("#messages .assistant .tribunal").last
    expect(run).to_be_visible(timeout=ANSWER_S)
    outcome = run.locator(".outcome").inner_text()
    assert outcome in ("accepted", "rejected", "not judged")
    verdicts = run.locator("tr.verdict")
    assert verdicts.count() >= 1
    for index in range(verdicts.count()):  # text_content: the round may be folded
        verdict = verdicts.nth(index).locator("td").nth(1).text_content()
        assert verdict in ("pass", "fail", "abstain")
    run.locator("details").first.evaluate("details => details.open = true")
    snap(page, "tribunal")

    page.click("button[data-tab=verdicts]")  # the same run, in the verdict log
    expect(page.locator("#verdict-list .verdict-run").first).to_contain_text(
        "why do clusters use a scheduler"
    )
    page.select_option("#outcome-filter", outcome)
    expect(page.locator("#verdict-list .verdict-run").first).to_have_attribute(
        "data-outcome", outcome
    )
    snap(page, "verdicts")


def test_a_killed_replica_is_seen_failing_and_being_replaced(
    page: Page, keys: tuple[Path, str, str], replica: Deployment
) -> None:
    use_key(page, keys[2], "deployments")
    first = page.locator("tr[data-replica='0']")
    expect(first).to_have_attribute("data-state", "ready", timeout=60_000)
    expect(first.locator("td").nth(4)).to_have_text(re.compile(r"^\w+(,\w+){3}$"))  # 4 GPUs
    expect(first.locator("td").nth(5)).to_have_text(re.compile(r"^[\d.]+ (s|min|h)$"))  # time left
    old_job = first.get_attribute("data-job")
    [record] = replica.records()
    os.kill(record.launcher_pid, signal.SIGKILL)
    events = page.locator(".deployment .events")
    expect(events).to_contain_text(f"job {old_job} ended", timeout=60_000)
    snap(page, "replica-failed")
    expect(first).not_to_have_attribute("data-job", old_job or "", timeout=30_000)
    expect(first).to_have_attribute("data-state", "ready", timeout=ANSWER_S)
    snap(page, "replica-replaced")


def test_scaling_shows_slurms_reason_for_a_pending_replica_and_needs_an_operator(
    page: Page, keys: tuple[Path, str, str], replica: Deployment
) -> None:
    use_key(page, keys[2], "deployments")  # a researcher's key: refused
    card = page.locator(".deployment[data-name='console-smollm2']")
    card.locator(".actions input").fill("4")
    card.locator(".actions button", has_text="Scale").click()
    expect(page.locator("#error")).to_contain_text("needs an operator")

    use_key(page, keys[1])  # the operator's: three nodes of four GPUs hold three replicas
    card.locator(".actions input").fill("4")
    card.locator(".actions button", has_text="Scale").click()
    waiting = page.locator("tr[data-state='pending']", has_text="Resources")  # SLURM's reason
    expect(waiting).to_have_count(1, timeout=60_000)
    snap(page, "deployments")

    card.locator(".actions input").fill("1")
    card.locator(".actions button", has_text="Scale").click()
    expect(page.locator(".deployment tr[data-replica]")).to_have_count(1, timeout=ANSWER_S)
    assert len(replica.status()) == 1


def test_the_load_page_charts_the_traffic_and_each_keys_usage(
    page: Page, keys: tuple[Path, str, str]
) -> None:
    use_key(page, keys[1], "load")
    charts = page.locator(f".model-load[data-model='{MODEL}'] .chart")
    expect(charts).to_have_count(5, timeout=30_000)
    expect(page.locator("#key-table")).to_contain_text("researcher")
    snap(page, "load")


def test_an_operator_stops_the_deployment_from_the_page(
    page: Page, keys: tuple[Path, str, str], replica: Deployment
) -> None:
    use_key(page, keys[1], "deployments")
    card = page.locator(".deployment[data-name='console-smollm2']")
    jobs = [status.job_id for status in replica.status()]
    card.locator(".actions button", has_text="Stop").click()  # confirmed by the dialog handler
    expect(page.locator("#deployment-list")).to_contain_text("No deployment", timeout=60_000)
    assert not replica.exists()

    def ended() -> bool:  # a cancelled job is listed while SLURM completes it (CG)
        running = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True,
                                 check=True).stdout.split()  # fmt: skip
        return not set(jobs) & set(running)

    wait_until(ended, timeout=60, what="the stopped deployment's jobs to end")

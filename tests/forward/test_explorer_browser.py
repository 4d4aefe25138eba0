"""The explorer page in a real browser (headless Debian chromium through selenium and chromium-driver).

A tiny run on a corpus full of ``</script>`` is explored; after the page's scripts ran we check the token
shading, the top-5 next tokens of the normal, substituted and skipped model at a clicked position, and a
category filter. Every expected value is recomputed here from the saved weights: the subject reopened through
the pipeline's own door, the saved forward model spliced into it (``subject.splice``) and the blocks removed
(``subject.skip``), never read from the page's data. One browser session serves the module.
"""

import json
import shutil

import pytest
import torch
from tiny_runs import GPT_FLAGS, GPT_SWEEPS, TEXT

from selfmodels.cli import main

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None,
    reason="chromium / chromium-driver are not installed and could not be: `make setup` installs them with apt-get "
           "(needs root or sudo and the Debian mirror); it printed why it could not")

INJECTION = "the end </script><script>window.injected=1</script><b>&amp;</b>."


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny co-trained GPT reproduction and an explorer page of it showing every held-out window."""
    root = tmp_path_factory.mktemp("explorer")
    corpus = root / "corpus.txt"
    corpus.write_text(TEXT.replace("the end.", INJECTION), encoding="utf-8")
    mp = pytest.MonkeyPatch()
    mp.setenv("SELFMODELS_CACHE", str(root / "cache"))
    try:
        out = root / "run"
        # trained longer than GPT_FLAGS alone, so that skipping block 0 visibly moves the next-token distribution
        assert main(["reproduce", "forward-self-models", "--out", str(out), "--corpus", str(corpus), *GPT_FLAGS, *GPT_SWEEPS,
                     "--subject.lm.steps", "150", "--subject.lm.lr", "0.01"]) == 0
        # every reproduction writes its page beside report.md, which links to it
        assert (out / "explorer.html").is_file() and (out / "explorer.npz").is_file()
        assert "](explorer.html)" in (out / "report.md").read_text()
        assert main(["forward", "explore", str(out), "--out", str(root / "page.html"), "--sequences", "6",
                     "--no-progress"]) == 0
        yield out, root / "page.html", _expected(out)
    finally:
        mp.undo()


@torch.no_grad()
def _expected(out):
    """Per held-out window: the normal / substituted / skipped next-token distributions and the normalised error,
    recomputed from the saved subject and forward model."""
    from selfmodels.configs import from_dict
    from selfmodels.forward.config import RunConfig
    from selfmodels.forward.model import ForwardModel
    from selfmodels.forward.pipeline import PipelineRun

    cfg = from_dict(RunConfig, json.loads((out / "config.json").read_text())["config"])
    opened = PipelineRun(cfg, out, torch.device("cpu"), False)
    opened.open()
    subject = opened.subject
    model = ForwardModel.from_pretrained(out / "forward_model", subject=subject)
    s, t = model.pair
    x, y = opened.eval_x, opened.eval_y
    normal = subject.model(x)  # (N, T, V)
    with subject.splice(model, s, t):
        substituted = subject.model(x)
    with subject.skip(s, t):
        skipped = subject.model(x)
    acts = subject.residuals(x, [s, t])
    prediction = model(acts[s])
    error = (acts[t] - prediction).norm(dim=-1) / (acts[t] - acts[s]).norm(dim=-1)  # (N, T)
    masks = opened.categories.masks(x, y, normal)
    probs = {m: logits.softmax(-1) for m, logits in (("normal", normal), ("substituted", substituted), ("skipped", skipped))}
    return {"x": x, "probs": probs, "error": error, "punctuation": masks["punctuation"], "strings": opened.token_strings}


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(flag)  # --no-sandbox: chromium refuses to run as root with its sandbox
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture
def page(browser, run):
    browser.get(run[1].as_uri())
    assert browser.execute_script("return document.body.dataset.ready") == "1"  # the script ran to its end
    return browser


def _spans(page, window):
    return page.find_elements("css selector", f'#text .seq[data-b="{window}"] .tok')


def test_tokens_are_shaded_by_the_normalised_error(page, run):
    expected = run[2]
    for window in (0, 1):
        spans = _spans(page, window)
        assert len(spans) == expected["x"].shape[1]
        assert "flag-position0" in spans[0].get_attribute("class") and spans[0].get_attribute("data-err") is None
        for t, span in enumerate(spans[1:], start=1):
            e = expected["error"][window, t].item()
            colour = page.execute_script("return getComputedStyle(arguments[0]).backgroundColor", span)
            alpha = float(colour.rstrip(")").split(",")[-1]) if colour.startswith("rgba") else 1.0
            assert alpha == pytest.approx(min(e, 1.0), abs=1 / 255 + 1e-3), (window, t, colour, e)  # 8-bit alpha
            assert float(span.get_attribute("data-err")) == pytest.approx(e, rel=1e-3)


def _assert_top5(cells, probs, position):
    """The page's five (token, probability) of one mode agree with ``probs`` (V,) at ``position`` (ties may swap)."""
    values = probs.topk(5).values
    for rank, cell in enumerate(cells):
        shown_id = int(cell.find_element("css selector", ".strtok").get_attribute("data-id"))
        shown_p = float(cell.find_element("css selector", ".prob").get_attribute("data-p"))
        assert shown_p == pytest.approx(values[rank].item(), rel=2e-3, abs=1e-6), (position, rank)
        assert probs[shown_id].item() == pytest.approx(shown_p, rel=2e-3, abs=1e-6), (position, rank, shown_id)


def test_clicking_a_position_shows_the_top5_of_the_normal_substituted_and_skipped_model(page, run):
    expected = run[2]
    probs = expected["probs"]
    # the position of window 1 where skipping moves the distribution most: the three columns must differ there
    gap = (probs["skipped"][1] - probs["normal"][1]).abs().amax(-1)
    t = int(gap[1:].argmax()) + 1
    assert gap[t] > 1e-3
    _spans(page, 1)[t].click()
    assert page.find_element("id", "details").get_attribute("data-key") == f"1:{t}"
    for mode in ("normal", "substituted", "skipped"):
        cells = page.find_elements("css selector", f'#top5 td[data-mode="{mode}"]')
        assert len(cells) == 5
        _assert_top5(cells, probs[mode][1, t], (mode, t))
    with pytest.raises(AssertionError):  # the check tells the modes apart at this position
        _assert_top5(page.find_elements("css selector", '#top5 td[data-mode="normal"]'), probs["skipped"][1, t], "mixed")
    assert "attention of block 0" in page.find_element("id", "details").text  # the layer's and the forward model's rows
    assert len(page.find_elements("css selector", "#attn-layer .attn span")) == t + 1


def test_a_category_filter_hides_the_other_tokens(page, run):
    punctuation = run[2]["punctuation"]
    page.find_element("id", "cat-punctuation").click()
    shown = hidden = 0
    for window in (0, 1, 2, 3):
        for t, span in enumerate(_spans(page, window)):
            assert span.is_displayed() == bool(punctuation[window, t]), (window, t)
            shown, hidden = shown + span.is_displayed(), hidden + (not span.is_displayed())
    assert shown and hidden
    page.find_element("id", "sort").click()  # the worst positions, filtered the same way
    rows = page.find_elements("css selector", "#worst tr[data-key]")
    assert rows and all(r.is_displayed() == bool(punctuation[tuple(map(int, r.get_attribute("data-key").split(":")))])
                        for r in rows)


def test_script_text_in_the_corpus_stays_text(page, run):
    expected = run[2]
    assert page.execute_script("return window.injected") is None
    assert len(page.find_elements("tag name", "script")) == 2
    text = "".join(page.execute_script("return Array.from(document.querySelectorAll('#text .tok')).map(n => n.textContent)"))
    ids = expected["x"].flatten().tolist()  # all 6 held-out windows are shown
    assert text == "".join(expected["strings"][i] for i in ids)
    assert "</script>" in text
    logs = [entry for entry in page.get_log("browser") if entry["level"] == "SEVERE"]
    assert not logs, logs


@pytest.fixture(scope="module")
def profile_page(tmp_path_factory):
    """The explorer page of a tiny whole-model profile (4 one-block pairs of a tiny Llama)."""
    from test_profile import FLAGS
    from tiny_runs import save_tiny_hf, write_corpus

    root = tmp_path_factory.mktemp("explorer-profile")
    out = root / "profile"
    argv = ["forward", "profile", "--main", str(save_tiny_hf(root / "tiny-llama", "llama")), "--corpus", str(write_corpus(root)),
            "--out", str(out), *FLAGS]
    assert main(argv) == 0
    assert main(["forward", "explore", str(out), "--no-progress"]) == 0
    return out / "explorer.html", json.loads((out / "results.json").read_text())


def test_a_profile_charts_every_pair_against_depth_and_each_point_opens_its_tokens(browser, profile_page):
    path, results = profile_page
    browser.get(path.as_uri())
    assert browser.execute_script("return document.body.dataset.ready") == "1"
    points = browser.find_elements("css selector", "#profile-chart circle")
    assert len(points) == 4 * len(results["rows"])  # cosine, skip cosine, update R², recovery per pair
    heights = {}
    for point in points:  # the chart's points sit where the run's numbers put them: higher value, higher point
        heights.setdefault(point.get_attribute("data-layer"), []).append(float(point.get_attribute("cy")))
    for i, row in enumerate(results["rows"]):
        order = sorted(("cosine", "skip_cosine", "delta_r2", "recovery"), key=lambda k: -row[k])
        cy = dict(zip(("cosine", "skip_cosine", "delta_r2", "recovery"), heights[str(i)]))
        assert [cy[k] for k in order] == sorted(cy.values())
    points[-1].click()  # the last pair's point
    last = results["rows"][-1]
    assert browser.find_element("css selector", "#controls strong").text.strip() == f"pair {last['source']}->{last['target']}"
    spans = browser.find_elements("css selector", "#text .tok")
    assert len(spans) == results["data"]["seq_len"] and all(s.get_attribute("data-key").startswith("0:") for s in spans)
    spans[3].click()
    assert browser.find_elements("css selector", "#alignment tr")  # one-block pair: heads / MLP alignment shown

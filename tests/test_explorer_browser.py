"""The explorer in a real browser (Debian's headless chromium via Selenium, from file://).

A tiny planted USAE run (with stand-in images, a fake CAM output and an extra column) goes
through ``experiments/explore.py``; a tiny SPARC run with per-token text through the library;
a synthetic 10,000-concept site measures the index's load time. Each page: sorted, searched,
opened, every image loaded, no console error; screenshots are saved under ``tmp_path``.
Needs ``apt-get install chromium chromium-driver`` (``.ci/run`` does it); without them the
tests fail with that message.
"""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from selenium.webdriver.common.action_chains import ActionChains

from experiments.configs import default as default_config
from tests.test_explorer import synthetic_inputs
from usae_jax.analysis.explorer import browser, media
from usae_jax.analysis.explorer.build import build_explorer
from usae_jax.analysis.explorer.measures import ExplorerConfig
from usae_jax.analysis.explorer.site import write_site
from usae_jax.analysis.statistics import StatisticsConfig
from usae_jax.config import OptimConfig, TrainConfig, USAEConfig
from usae_jax.data.synthetic.planted import PlantedConfig, generate_planted
from usae_jax.train.loop import train

pytestmark = pytest.mark.slow

MODELS, WIDTHS, ROWS = ("alpha", "beta", "gamma"), (24, 16, 32), 2048


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    profile = tmp_path_factory.mktemp("chromium_profile")  # a fresh profile for this module
    chrome = browser.open_chromium(width=1300, height=1000, user_data_dir=str(profile))
    yield chrome
    chrome.quit()


def _ready(chrome, url=None, concept=None):
    """Open ``url`` (or stay), wait for the page (or concept page) to render and every image to
    load; check that none is broken and the console has no error."""
    if url is not None:
        chrome.get(url)
    check = "document.body.getAttribute('data-ready')"
    browser.wait_for(chrome, check if concept is None else f"{check} === '{concept}'")
    browser.wait_images(chrome)
    assert browser.broken_images(chrome) == []
    assert browser.console_errors(chrome) == []


def _page_ids(chrome):
    return chrome.execute_script(
        "return Array.from(document.querySelectorAll('#concepts tbody tr'))"
        ".map(r => Number(r.getAttribute('data-concept')))"
    )


def _planted_run(tmp_path):
    """A tiny USAE on the default planted data with 3 models and 2048 rows."""
    planted = generate_planted(
        dataclasses.replace(
            default_config.get_planted(), model_names=MODELS, widths=WIDTHS, rows=ROWS
        )
    )
    config = TrainConfig(
        usae=USAEConfig(model_names=MODELS, widths=WIDTHS, num_concepts=48, top_k=4),
        optim=OptimConfig(learning_rate=1e-2),
        batch_rows=256,
        num_steps=150,
        checkpoint_every=150,
        data_parallel=1,
        progress_bar=False,
    )
    train(config, tmp_path / "run", planted.source())
    return tmp_path / "run"


def test_planted_usae_site_in_chromium(driver, tmp_path):
    workdir = _planted_run(tmp_path)
    # Stand-in images: the 2048 rows are 128 images of a 4 x 4 token grid, 16 x 16 pixels each.
    rng = np.random.default_rng(0)
    np.save(tmp_path / "image_index.npy", np.repeat(np.arange(128), 16))
    np.save(tmp_path / "images.npy", rng.random((128, 16, 16, 3)).astype(np.float32))
    cam = {
        "models": list(MODELS),
        "concepts": [{"concept": 0} | {m: {"final_pre": 1.0} for m in MODELS}],
    }
    (tmp_path / "cam.json").write_text(json.dumps(cam))
    np.savez(tmp_path / "cam.npz", images=rng.random((1, 3, 16, 16, 3)).astype(np.float16))
    (tmp_path / "columns.json").write_text(json.dumps({"splice_effect": rng.random(48).tolist()}))
    site = tmp_path / "site"
    models = ",".join(f"{m}:{w}" for m, w in zip(MODELS, WIDTHS, strict=True))
    command = [
        sys.executable,
        "-m",
        "experiments.explore",
        f"--workdir={workdir}",
        f"--out={site}",
        f"--planted_models={models}",
        f"--planted_rows={ROWS}",
        f"--image_index={tmp_path / 'image_index.npy'}",
        f"--images={tmp_path / 'images.npy'}",
        "--grid=4,4",
        f"--cam={tmp_path / 'cam'}",
        f"--columns={tmp_path / 'columns.json'}",
        "--image_concepts=6",
        "--screenshot",
    ]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    print(done.stdout)
    for name in ("explorer_index.png", "explorer_concept.png"):
        assert (site / "screenshots" / name).stat().st_size > 20_000, name
    index = json.loads((site / "json" / "index.json").read_text())
    assert set(index["concepts"]["label"]) <= {"shared", "specific", "packed", "none"}

    _ready(driver, browser.page_url(site))
    # 11 concept measures + the model-diffing columns (relative norm and latent scaling per model,
    # class, artefact flag: usae_jax.analysis.explorer.measures.diffing_columns).
    columns = 11 + 2 * len(MODELS) + 2
    headers = "return document.querySelectorAll('#concepts th').length"
    assert driver.execute_script(headers) == columns
    firing = [i for i in range(48) if any(index["concepts"]["firing_rate"][m][i] for m in MODELS)]
    assert sorted(_page_ids(driver)) == firing  # firing only (the default), 48 < one page
    entropy = index["concepts"]["firing_entropy"]
    header = driver.find_element("css selector", "th[data-key='firing_entropy']")
    header.click()
    descending = [entropy[i] for i in _page_ids(driver)]
    assert descending == sorted(descending, reverse=True)
    header.click()
    ascending = [entropy[i] for i in _page_ids(driver)]
    assert ascending == sorted(ascending) and "sorted-asc" in header.get_attribute("class")
    top = max(firing, key=lambda i: index["concepts"]["energy"][i])
    search = driver.find_element("id", "search")
    search.send_keys(str(top))
    assert _page_ids(driver) == [top]
    search.clear()
    search.send_keys("shared")
    shared = [i for i in firing if index["concepts"]["label"][i] == "shared"]
    assert sorted(_page_ids(driver)) == shared
    driver.save_screenshot(str(tmp_path / "index.png"))
    print(f"index screenshot: {tmp_path / 'index.png'}")

    # Clicking the scatter point of the most energetic concept opens it.
    point = driver.execute_script(f"return USAE_EXPLORER.scatterPoint({top})")
    canvas = driver.find_element("id", "scatter")
    size = canvas.size
    ActionChains(driver).move_to_element_with_offset(
        canvas, round(point["x"] - size["width"] / 2), round(point["y"] - size["height"] / 2)
    ).click().perform()
    browser.wait_for(driver, "document.body.getAttribute('data-page') === 'concept'")
    assert driver.current_url.endswith(f"concept.html#c={top}")
    _ready(driver, concept=top)
    models = driver.find_elements("css selector", "section.model")
    assert [m.get_attribute("data-model") for m in models] == list(MODELS)
    assert len(driver.find_elements("css selector", "section.model svg rect")) == 3 * 20
    images = driver.execute_script("return document.images.length")
    assert images >= 3, images  # crops per model (top concept has energy: it was drawn)
    driver.save_screenshot(str(tmp_path / "concept.png"))
    print(f"concept screenshot: {tmp_path / 'concept.png'}")
    # The CAM concept shows its three CAM images; a neighbour link opens another concept.
    _ready(driver, browser.page_url(site, "concept.html", "c=0"), 0)
    assert len(driver.find_elements("css selector", ".cam img")) == 3
    link = driver.find_element("css selector", "section.model ul.links a")
    target = link.text
    link.click()
    browser.wait_for(driver, f"document.body.getAttribute('data-ready') === '{target}'")
    assert browser.console_errors(driver) == []
    assert (tmp_path / "concept.png").stat().st_size > 20_000


def test_sparc_text_site_in_chromium(driver, tmp_path):
    planted = generate_planted(
        PlantedConfig(
            model_names=("p", "q"), widths=(16, 12), num_shared=8, num_specific=2, rows=512
        )
    )
    usae = USAEConfig(
        model_names=("p", "q"),
        widths=(16, 12),
        num_concepts=32,
        top_k=4,
        architecture="sparc",
        sparsity="global_topk",
        loss="l2_auxk",
        aux="dead_latents",
        dead_k_aux=8,
    )
    config = TrainConfig(
        usae=usae, batch_rows=64, num_steps=40, checkpoint_every=40, progress_bar=False
    )
    train(config, tmp_path / "sparc", planted.source())
    # Per-token text: the 512 rows are the 8 tokens of 64 made-up sentences.
    words = [[f"w{i}_{j}" for j in range(8)] for i in range(64)]
    texts = media.RowTexts(words, np.repeat(np.arange(64), 8), np.tile(np.arange(8), 64))
    result = build_explorer(
        tmp_path / "sparc",
        planted.source(),
        tmp_path / "site",
        ExplorerConfig(statistics=StatisticsConfig(batch_rows=128)),
        texts=texts,
    )
    index = json.loads((tmp_path / "site" / "json" / "index.json").read_text())
    assert index["run"]["architecture"] == "sparc" and index["has_text"]
    _ready(driver, browser.page_url(result["out_dir"]))
    top = max(range(32), key=lambda i: index["concepts"]["energy"][i] or 0)
    driver.find_element("css selector", f"tr[data-concept='{top}'] a").click()
    browser.wait_for(driver, f"document.body.getAttribute('data-ready') === '{top}'")
    hits = driver.find_elements("css selector", ".context .hit")
    assert hits and all(h.text.startswith("w") for h in hits)
    assert browser.console_errors(driver) == []
    driver.save_screenshot(str(tmp_path / "sparc_concept.png"))
    print(f"SPARC concept screenshot: {tmp_path / 'sparc_concept.png'}")


def test_ten_thousand_concepts_load_and_page(driver, tmp_path):
    config = ExplorerConfig(write_json=False)
    write_site(tmp_path, synthetic_inputs(10_000), config)
    _ready(driver, browser.page_url(tmp_path))
    ready_ms = driver.execute_script("return USAE_EXPLORER.readyMs")
    render_ms = driver.execute_script("return USAE_EXPLORER.renderMs")
    print(
        f"10,000-concept index: ready {ready_ms:.0f} ms after navigation start "
        f"(table, filters and scatter {render_ms:.0f} ms)"
    )
    assert len(_page_ids(driver)) == config.page_rows
    first = _page_ids(driver)
    driver.find_element("id", "next").click()
    assert len(set(_page_ids(driver)) & set(first)) == 0
    driver.find_element("id", "search").send_keys("unique:alpha")
    ids = _page_ids(driver)
    unique = driver.execute_script("return USAE_EXPLORER_INDEX.concepts.unique_to")
    assert ids and all(unique[i] == "alpha" for i in ids)
    assert ready_ms < 60_000  # generous: a contended CI machine; catches a quadratic blow-up

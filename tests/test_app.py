"""The explorer through ``gradio_client`` against the launched app: every api_name, values
asserted (PSNR falls with the bits, the bytes are the exported file's, the file decodes to the
same PSNR, bad input gets a clear message and the app keeps serving)."""

from __future__ import annotations

import csv
import json
import os
import re
import threading
import time

import pytest

from nerfcomp import scenes, ui

SCENE = "primitives"
SIZE = 48  # preview pixels: small, so the suite stays quick on 2 busy cores
pytestmark = pytest.mark.skipif(
    not scenes.get_scene(SCENE).checkpoint.exists(), reason=f"no {SCENE} checkpoint"
)
API_NAMES = {
    "/compress",
    "/estimate",
    "/inspect",
    "/scene",
    "/view",
    "/preset_report",
    "/preset_best",
    "/preset_smallest",
    "/refine",
    "/cancel",
    "/orbit",
    "/export",
    "/sweep_csv",
    "/upload_checkpoint",
    "/open_nrc",
    "/auto",
    "/auto_apply",
    "/cancel_auto",
}
CONTRACT = {"psnr", "psnr_original", "psnr_test", "ssim", "bytes", "bytes_original", "ratio"}
SWEEP = {  # a hand-made table: original 30 dB
    "scene": SCENE,
    "bytes_original": 636704,
    "psnr_original": 30.0,
    "points": [
        {"bits": 8, "rank": None, "prune": 0.0, "admm_steps": 0, "psnr": 29.9, "bytes": 160000},
        {"bits": 5, "rank": None, "prune": 0.0, "admm_steps": 0, "psnr": 29.8, "bytes": 100000},
        {"bits": 4, "rank": None, "prune": 0.0, "admm_steps": 0, "psnr": 29.2, "bytes": 80000},
        {"bits": 3, "rank": 32, "prune": 0.5, "admm_steps": 0, "psnr": 26.0, "bytes": 20000},
        {"bits": 2, "rank": 16, "prune": 0.5, "admm_steps": 0, "psnr": 20.0, "bytes": 9000},
    ],
}
for _p in SWEEP["points"]:
    _p.update(ssim=0.9, ratio=round(636704 / _p["bytes"], 3))


def compress(client, bits, **kw):
    args = dict(rank=128, prune=0.0, azimuth=30, elevation=30, size=SIZE) | kw
    return client.predict(SCENE, bits, api_name="/compress", **args)


def test_every_event_has_a_public_api_name(client):
    named = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert set(named) == API_NAMES


def test_psnr_and_bytes_fall_with_the_bits(client):
    hi, lo = compress(client, 6), compress(client, 2)
    r6, r2 = hi[3], lo[3]
    assert CONTRACT | {"render_ms", "timing_ms"} <= set(r6)
    assert r6["psnr_test"] > r2["psnr_test"] + 3  # 2-bit k-means visibly hurts
    assert r6["psnr"] > r2["psnr"]  # this view, against the ground truth
    assert r6["psnr_percent"] > 97 and r6["psnr_original"] == r2["psnr_original"]
    assert r6["bytes"] > r2["bytes"] > 0
    assert r2["ratio"] == round(r2["bytes_original"] / r2["bytes"], 3)
    assert r2["psnr_test_kind"].startswith("fixed subset")
    assert set(r2["timing_ms"]) >= {"compress", "grid", "render", "metrics", "figures"}
    original6, compressed6 = hi[0]
    original2, compressed2 = lo[0]
    assert original6.endswith(".png") and compressed6.endswith(".png")
    assert open(compressed6, "rb").read() != open(compressed2, "rb").read()
    assert open(original6, "rb").read() == open(original2, "rb").read()
    assert "KB" in lo[4] and lo[2].count("nc-card'") == 6  # size line, six readout cards
    rd = json.loads(lo[6]["plot"])
    star = [t for t in rd["data"] if t.get("name") == "current setting"][0]
    assert star["x"] == [r2["bytes"]] and rd["layout"]["uirevision"] == SCENE


def test_export_is_the_file_and_decodes_to_the_same_psnr(client):
    from nerfcomp.compress import load, read_header
    from nerfcomp.evaluate import evaluate_model

    readout = compress(client, 2)[3]
    path, result = client.predict(SCENE, 2, 128, 0.0, False, "k-means", 0, 32, api_name="/export")
    assert os.path.getsize(path) == result["bytes"] == readout["bytes"]
    with open(path, "rb") as f:
        assert read_header(f.read())["meta"]["scene"] == SCENE
    score = evaluate_model(load(path).eval(), SCENE, size=32)
    assert score["psnr"] == result["psnr"] and score["ssim"] == result["ssim"]
    assert result["psnr"] < result["psnr_original"] and result["test_views"] == 8


def test_auto_finds_an_allocation_and_applies_an_edited_table(client):
    from nerfcomp.ui_auto import GOALS

    status, table, pair, _, _, readout = client.predict(
        SCENE, GOALS[0], 99.0, 60, 0, 30, 30, SIZE, api_name="/auto"
    )
    assert status.startswith("target met"), status
    assert readout["psnr"] >= 0.99 * readout["psnr_original"]
    assert readout["psnr_kind"] == "exact: all held-out views"
    rows = table["data"]
    layers = [r[0] for r in rows]
    assert layers[0] == "trunk.0" and len(layers) == 12
    bits = {r[0]: r[1] for r in rows}
    assert max(bits.values()) > min(bits.values())  # an allocation, not one setting for all
    kb = sum(r[4] for r in rows)
    assert abs(kb * 1e3 - readout["bytes"]) < 1000  # the rows add up to the file (+ header)
    assert all(os.path.exists(p) for p in pair)
    for r in rows:  # the user's edit: every layer 8-bit, dense, unpruned
        r[1], r[2], r[3] = 8, "full", 0
    *_, edited = client.predict(
        SCENE, {"headers": table["headers"], "data": rows}, 30, 30, SIZE, api_name="/auto_apply"
    )
    assert edited["config"]["bits"] == 8 and not edited["config"]["layers"]
    assert edited["bytes"] == compress(client, 8)[3]["bytes"]
    with pytest.raises(Exception, match="bits must be one of"):
        rows[0][1] = 9
        client.predict(SCENE, {"headers": table["headers"], "data": rows}, api_name="/auto_apply")


def test_estimate_is_close_to_the_file(client):
    text = client.predict(SCENE, 2, 128, 0.0, api_name="/estimate")
    kb = float(re.search(r"≈ \*\*([\d,.]+) KB", text).group(1).replace(",", ""))
    actual = compress(client, 2)[3]["bytes"] / 1e3
    assert 0.7 * actual < kb < 1.3 * actual


def test_inspect_shows_stages_codebook_and_rank_cut(client):
    stages, hist, spectrum = client.predict(SCENE, 2, 32, 0.0, "trunk.1", api_name="/inspect")
    water = json.loads(stages["plot"])["data"][0]
    labels = [x.split("<br>")[0] for x in water["x"]]
    assert labels == ["float32", "rank 32", "k-means 2 bit", "entropy-coded"]
    assert all(d < 0 for d in water["y"][1:])  # every stage saves bytes
    traces = json.loads(hist["plot"])["data"]
    books = [t for t in traces if str(t.get("name", "")).startswith("centroids")]
    assert len(books) == 2 and all(1 < len(t["x"]) <= 4 for t in books)  # A and B, 2 bits
    spec = json.loads(spectrum["plot"])
    assert "rank cut at 32" in spec["layout"]["title"]["text"]


def test_scene_and_view_controls(client):
    update = client.predict(SCENE, api_name="/scene")
    assert update["value"] == "trunk.1" and len(update["choices"]) == 12
    cam = scenes.test_cameras()[1]
    assert client.predict("held-out test view 2", api_name="/view") == (
        cam.azimuth,
        cam.elevation,
    )


def test_presets_read_the_sweep_table(client, tmp_path, monkeypatch):
    monkeypatch.setattr(ui, "SWEEP_DIR", tmp_path)
    report = client.predict(SCENE, api_name="/preset_report")
    assert report[:6] == (3, "k-means", 128, 0.0, True, ui.DEFAULT_ADMM_STEPS)
    with pytest.raises(Exception, match="no sweep table for primitives"):
        client.predict(SCENE, api_name="/preset_best")
    with pytest.raises(Exception, match="python -m nerfcomp sweep --scene primitives"):
        client.predict(SCENE, api_name="/sweep_csv")
    (tmp_path / f"{SCENE}.sweep.json").write_text(json.dumps(SWEEP))
    best = client.predict(SCENE, api_name="/preset_best")
    assert best[:4] == (5, "k-means", 128, 0.0)  # smallest with ≥ 29.7 dB
    smallest = client.predict(SCENE, api_name="/preset_smallest")
    assert smallest[:4] == (3, "k-means", 32, 0.5)  # smallest with ≥ 25.5 dB
    rows = list(csv.DictReader(open(client.predict(SCENE, api_name="/sweep_csv"))))
    assert [int(r["bytes"]) for r in rows] == [9000, 20000, 80000, 100000, 160000]
    refined = {**SWEEP["points"][2], "admm_steps": 1000, "admm_lr": [2e-3, 5e-5], "bytes": 70000}
    (tmp_path / f"{SCENE}.sweep.json").write_text(
        json.dumps({**SWEEP, "points": [*SWEEP["points"], refined]})
    )
    rows = list(csv.DictReader(open(client.predict(SCENE, api_name="/sweep_csv"))))
    assert [(r["admm_steps"], r["admm_lr"], r["admm_lr_final"]) for r in rows[2:4]] == [
        ("1000", "0.002", "5e-05"),
        ("0", "", ""),
    ]


def test_orbit_video(client):
    import imageio.v2 as imageio

    path = client.predict(SCENE, 2, 128, 0.0, 4, 32, api_name="/orbit")
    reader = imageio.get_reader(path)
    frames = [f for f in reader]
    assert len(frames) == 4 and frames[0].shape == (86, 132, 3)  # 2 × 64 px + gap, caption


@pytest.mark.parametrize(
    "args, message",
    [
        ((SCENE, 17, 128, 0.0), "bits must be a whole number 1..8"),
        ((SCENE, "four", 128, 0.0), "bits must be"),
        ((SCENE, 4, 128, 1.5), "prune must be in"),
        ((SCENE, 4, -3, 0.0), "rank must be in"),
        (("nowhere", 4, 128, 0.0), "scene must be a scene with a checkpoint"),
        ((SCENE, 4, 128, 0.0, 30, 30, 10**6), "size must be in"),
    ],
)
def test_bad_input_gets_a_clear_error_and_the_app_keeps_serving(client, args, message):
    with pytest.raises(Exception, match=message):
        client.predict(*args, api_name="/compress")
    assert compress(client, 2)[3]["bits"] == 2


def _fake_refine(delay: float):
    """Stands in for ADMM: reports progress with a PSNR, honours cancel, returns Θ = Π(W)."""
    from nerfcomp.compress import compress as project
    from nerfcomp.compress.admm import Cancelled

    def refine(base, cfg, scene, settings, progress=None, cancel=None):
        for i in range(5):
            time.sleep(delay)
            if cancel is not None and cancel.is_set():
                raise Cancelled("refinement cancelled")
            if progress is not None:
                progress((i + 1) / 5, f"LC {i + 1}/5 · train PSNR {15 + i:.2f} dB")
        return project(base, cfg)

    return refine


def test_refine_caches_the_refined_model(client, monkeypatch):
    monkeypatch.setattr("nerfcomp.compress.admm.refine", _fake_refine(0.3))
    status, curve, result = client.predict(
        SCENE, 2, 128, 0.0, 7, False, "k-means", api_name="/refine"
    )
    assert "Refined" in status and result["admm_steps"] == 7
    assert result["psnr_kind"].startswith("exact") and result["bytes"] > 0
    readout = compress(client, 2, admm_steps=7)[3]  # coming back: the cached refined model
    assert readout["refined"] and readout["psnr_test"] == result["psnr"]
    assert readout["psnr_test_kind"].startswith("exact")


def test_refine_can_be_cancelled(client, monkeypatch):
    monkeypatch.setattr("nerfcomp.compress.admm.refine", _fake_refine(1.0))
    job = client.submit(SCENE, 2, 128, 0.0, 9, False, "k-means", api_name="/refine")
    while "refine" not in {t.name for t in threading.enumerate()}:
        time.sleep(0.05)
    assert client.predict(api_name="/cancel") == "Cancelling…"
    with pytest.raises(Exception, match="cancelled"):
        job.result(timeout=60)
    assert client.predict(api_name="/cancel") == "Nothing to cancel."


def test_a_long_refine_does_not_hold_up_the_sliders(client, monkeypatch):
    """Refine queues apart from the slider path: /compress answers while a refinement runs."""
    monkeypatch.setattr("nerfcomp.compress.admm.refine", _fake_refine(1.0))
    job = client.submit(SCENE, 3, 128, 0.0, 11, False, "k-means", api_name="/refine")
    while "refine" not in {t.name for t in threading.enumerate()}:
        time.sleep(0.05)
    assert compress(client, 5)[3]["bits"] == 5
    assert not job.done()  # the slider answered before the 5 s refinement ended
    assert "Refined" in job.result(timeout=60)[0]


def test_concurrent_users_get_the_answers_they_would_get_alone(client):
    """Four users at once (two run in parallel on the slider path), each result equal to the
    same call made alone."""
    from gradio_client import Client

    settings = [(b, r, p) for b, r, p in [(3, 128, 0.0), (6, 32, 0.0), (4, 128, 0.2), (2, 64, 0.1)]]
    users = [Client(client.src, verbose=False) for _ in settings]
    results: dict[int, dict] = {}

    def user(i: int) -> None:
        b, r, p = settings[i]
        results[i] = compress(users[i], b, rank=r, prune=p)[3]

    threads = [threading.Thread(target=user, args=(i,)) for i in range(len(settings))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    keys = ("psnr", "psnr_original", "psnr_test", "ssim", "bytes", "ratio")
    for i, (b, r, p) in enumerate(settings):
        alone = compress(client, b, rank=r, prune=p)[3]
        assert {k: results[i][k] for k in keys} == {k: alone[k] for k in keys}

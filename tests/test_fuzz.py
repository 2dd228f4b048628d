"""Fuzzing every api_name of the explorer: wrong types, out-of-range numbers, NaN/inf, empty
and huge strings, unknown scenes and missing files each get an error with a clear message;
afterwards a valid call still returns the same answer as before."""

from __future__ import annotations

import itertools
import math

import pytest

from nerfcomp import scenes

SCENE = "primitives"
pytestmark = pytest.mark.skipif(
    not scenes.get_scene(SCENE).checkpoint.exists(), reason=f"no {SCENE} checkpoint"
)

HUGE = "x" * 100_000
BAD = [None, "", HUGE, "nowhere", math.nan, math.inf, -math.inf, -1e308, 1e308, [], {}, True]
FILE = "file"  # a parameter that takes an upload
# valid arguments of every endpoint with parameters (/cancel has none)
VALID = {
    "/compress": (SCENE, 4, 128, 0.0, 30, 30, 64, False, "k-means", 0, "original NeRF"),
    "/estimate": (SCENE, 4, 128, 0.0, False, "k-means"),
    "/inspect": (SCENE, 4, 128, 0.0, "trunk.1", False, "k-means", 0),
    "/scene": (SCENE,),
    "/view": ("front",),
    "/preset_report": (SCENE,),
    "/preset_best": (SCENE,),
    "/preset_smallest": (SCENE,),
    "/refine": (SCENE, 4, 128, 0.0, 5, False, "k-means"),
    "/orbit": (SCENE, 4, 128, 0.0, 8, 64, False, "k-means", 0),
    "/export": (SCENE, 4, 128, 0.0, False, "k-means", 0, 100),
    "/sweep_csv": (SCENE,),
    "/upload_checkpoint": (FILE, SCENE),
    "/open_nrc": (FILE, 30, 30, 64),
    "/auto": (SCENE, "% of original PSNR", 99.0, 60, 0, 30, 30, 64),
    "/auto_apply": (
        SCENE,
        {"headers": ["layer"], "data": [["trunk.0", 8, "full", 0.0]]},
        30,
        30,
        64,
    ),
}
# values that are valid for some parameter: fuzzing must not expect an error for them
RANKED = ("/compress", "/estimate", "/inspect", "/refine", "/orbit", "/export")
TOLERATED = {(api, 2) for api in RANKED}  # rank None: full rank


def _cases():
    """(api, argument index, bad value): every parameter gets three of the bad values,
    rotating through the list so that every kind reaches every endpoint."""
    rotation = itertools.cycle(range(len(BAD)))
    for api, args in VALID.items():
        for i in range(len(args)):
            for _ in range(3):
                value = BAD[next(rotation)]
                valid_bool = isinstance(value, bool) and isinstance(args[i], bool)
                if not (value is None and (api, i) in TOLERATED) and not valid_bool:
                    yield api, i, value


def _message(e: BaseException) -> str:
    return str(e).strip()


def test_every_endpoint_is_fuzzed(client):
    named = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    with_params = {name for name, info in named.items() if info["parameters"]}
    assert with_params == set(VALID)


def test_bad_input_gets_a_clear_error_and_the_app_keeps_answering(client, tmp_path):
    from gradio_client import handle_file

    before = client.predict(*VALID["/compress"], api_name="/compress")[3]
    missing = tmp_path / "missing.safetensors"
    missing.write_bytes(b"")  # uploaded, then deleted below: a file that is gone
    failures = []
    for api, i, value in _cases():
        args = list(VALID[api])
        if FILE in args:  # the file parameter itself: an empty file where one is expected
            args[args.index(FILE)] = handle_file(str(missing)) if i == 0 else value
        if i != 0 or FILE not in VALID[api]:
            args[i] = value
        try:
            client.predict(*args, api_name=api)
        except Exception as e:  # the client raises AppError (or a subclass)
            msg = _message(e)
            unclear = not 12 <= len(msg) <= 2000 or msg.lower() in {"error", "none"}
            if unclear or "Traceback" in msg:
                failures.append((api, i, repr(value)[:40], f"unclear message: {msg[:120]!r}"))
            continue
        failures.append((api, i, repr(value)[:40], "accepted"))
    assert not failures, "\n".join(map(str, failures))
    after = client.predict(*VALID["/compress"], api_name="/compress")[3]
    keys = ("psnr", "psnr_test", "ssim", "bytes", "ratio")
    assert {k: after[k] for k in keys} == {k: before[k] for k in keys}

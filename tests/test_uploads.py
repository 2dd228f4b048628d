"""Uploads: a valid checkpoint is explorable and a valid .nrc viewable; a truncated file, a
file of another format, a pickle, an oversized file and a checkpoint with wrong shapes are
each rejected with a specific message, and nothing in them is executed."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

from nerfcomp import scenes, uploads
from nerfcomp.compress import CompressionConfig, compress, save
from nerfcomp.model import CHECKPOINT_FORMAT, NeRF, NeRFConfig, save_checkpoint

SCENE = "primitives"


class _Boom:
    """Unpickling this runs ``open(marker, "w")``: the proof that nothing was unpickled is
    that the marker never appears."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def files(tmp_path, tiny_checkpoint):
    """Bad files next to a good checkpoint and a good .nrc of the same tiny model."""
    marker = tmp_path / "EXECUTED"
    good = tiny_checkpoint.read_bytes()
    out = {"marker": marker, "checkpoint": tiny_checkpoint}
    out["truncated"] = tmp_path / "truncated.safetensors"
    out["truncated"].write_bytes(good[: len(good) // 2])
    out["png"] = tmp_path / "picture.safetensors"
    out["png"].write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    out["pickle"] = tmp_path / "model.safetensors"
    out["pickle"].write_bytes(pickle.dumps(_Boom(str(marker))))
    out["torch_save"] = tmp_path / "model.pt"
    torch.save({"boom": _Boom(str(marker))}, out["torch_save"])
    out["oversized"] = tmp_path / "huge.safetensors"
    with open(out["oversized"], "wb") as f:
        f.truncate(uploads.MAX_BYTES + 1)
    out["shapes"] = tmp_path / "shapes.safetensors"  # says width 16, holds width-8 tensors
    tensors = NeRF(NeRFConfig(width=8)).state_dict()
    meta = {"format": CHECKPOINT_FORMAT, "config": json.dumps({"width": 16}), "extra": "{}"}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out["shapes"]), meta)
    out["wide"] = tmp_path / "wide.safetensors"
    save_checkpoint(NeRF(NeRFConfig(width=uploads.MAX_WIDTH * 2, depth=2, skip=1)), out["wide"])
    tiny, _ = uploads.check_checkpoint(tiny_checkpoint)
    out["nrc"] = tmp_path / "tiny.nrc"
    save(compress(tiny, CompressionConfig(bits=4)), out["nrc"], meta={"scene": SCENE})
    out["checkpoint_as_nrc"] = tmp_path / "renamed.nrc"  # Gradio checks suffixes, so must we
    out["checkpoint_as_nrc"].write_bytes(good)
    out["nrc_truncated"] = tmp_path / "cut.nrc"
    out["nrc_truncated"].write_bytes(out["nrc"].read_bytes()[:-40])
    return out


REJECTED = [
    ("checkpoint", "truncated", "not a readable safetensors checkpoint"),
    ("checkpoint", "png", "not a readable safetensors checkpoint"),
    ("checkpoint", "pickle", "a Python pickle; nerfcomp never loads pickles"),
    ("checkpoint", "torch_save", "torch.save's format, which holds a pickle"),
    ("checkpoint", "oversized", "too large"),
    ("checkpoint", "shapes", "tensor shapes do not match the config"),
    ("checkpoint", "wide", "more than this app renders interactively"),
    ("checkpoint", "nrc", "a compressed .nrc file, not a checkpoint"),
    ("nrc", "nrc_truncated", "truncated"),
    ("nrc", "png", "not a nerfcomp .nrc file"),
    ("nrc", "pickle", "a Python pickle"),
    ("nrc", "checkpoint", "a safetensors checkpoint, not a .nrc file"),
    ("nrc", "oversized", "too large"),
]


@pytest.mark.parametrize(("kind", "name", "message"), REJECTED)
def test_bad_uploads_are_rejected_with_the_reason(files, kind, name, message):
    check = uploads.check_checkpoint if kind == "checkpoint" else uploads.check_nrc
    with pytest.raises(ValueError, match=message) as e:
        check(files[name])
    assert str(files[name].parent) not in str(e.value)  # names the file, not the server path
    assert not files["marker"].exists()


def test_valid_uploads_load(files):
    model, _ = uploads.check_checkpoint(files["checkpoint"])
    assert model.config.width == 16
    decoded, meta = uploads.check_nrc(files["nrc"])
    assert meta["scene"] == SCENE and isinstance(decoded, NeRF)


# --- through the app ---------------------------------------------------------------------

needs_scene = pytest.mark.skipif(
    not scenes.get_scene(SCENE).checkpoint.exists(), reason=f"no {SCENE} checkpoint"
)


@needs_scene
def test_uploaded_checkpoint_is_explorable(client, files):
    from gradio_client import handle_file

    picker, status = client.predict(
        handle_file(str(files["checkpoint"])), SCENE, api_name="/upload_checkpoint"
    )
    assert "16-wide NeRF" in status
    name = picker["value"] if isinstance(picker, dict) else picker
    assert name.startswith("upload:") and name.endswith(f":{SCENE}")
    args = dict(rank=128, prune=0.0, azimuth=30, elevation=30, size=32)
    r8 = client.predict(name, 8, api_name="/compress", **args)[3]
    r1 = client.predict(name, 1, api_name="/compress", **args)[3]
    assert r8["scene"] == name and r8["bytes_original"] == files["checkpoint"].stat().st_size
    assert r1["bytes"] < r8["bytes"] < r8["bytes_original"]


@needs_scene
@pytest.mark.parametrize(
    ("api", "name", "message"),
    [
        ("/upload_checkpoint", "pickle", "never loads pickles"),
        ("/upload_checkpoint", "torch_save", "Invalid file type"),  # Gradio checks the suffix
        ("/upload_checkpoint", "shapes", "tensor shapes do not match"),
        ("/open_nrc", "checkpoint_as_nrc", "a safetensors checkpoint, not a .nrc file"),
        ("/open_nrc", "nrc_truncated", "truncated"),
    ],
)
def test_rejected_upload_through_the_app(client, files, api, name, message):
    from gradio_client import handle_file

    args = (SCENE,) if api == "/upload_checkpoint" else (30, 30, 64)
    with pytest.raises(Exception, match=message):
        client.predict(handle_file(str(files[name])), *args, api_name=api)
    assert not files["marker"].exists()


@needs_scene
def test_open_nrc_scores_the_decoded_file(client):
    from gradio_client import handle_file

    path = scenes.ASSETS / f"{SCENE}.nrc"
    if not path.exists():
        pytest.skip("no shipped .nrc file")
    pair, result = client.predict(handle_file(str(path)), 30, 30, 64, api_name="/open_nrc")
    assert result["scene"] == SCENE and result["bytes"] == path.stat().st_size
    assert result["ratio"] > 4 and 0.9 * result["psnr_original"] < result["psnr"]

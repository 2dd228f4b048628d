"""The command line: the JSON contracts of DESIGN.md and one-line errors."""

import json
import subprocess
import sys

import pytest

from nerfcomp.__main__ import main

pytestmark = pytest.mark.usefixtures("one_thread")


def run(capsys, *argv) -> tuple[int, dict | None, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, (json.loads(out) if rc == 0 and "--json" in argv else None), err


def test_scenes_json_through_the_module_entry_point():
    p = subprocess.run(
        [sys.executable, "-m", "nerfcomp", "scenes", "--json"], capture_output=True, text=True
    )
    assert p.returncode == 0, p.stderr
    scenes = json.loads(p.stdout)["scenes"]
    assert [s["name"] for s in scenes] == ["primitives", "blocks", "glossy"]
    assert all({"name", "checkpoint", "psnr"} <= set(s) for s in scenes)


def test_compress_then_decode_agree(capsys, tiny_checkpoint, tmp_path):
    out = tmp_path / "m.nrc"
    args = ["--scene", "primitives", "--checkpoint", str(tiny_checkpoint), "--bits", "3"]
    rc, comp, err = run(capsys, "compress", *args, "--out", str(out), "--json")
    assert rc == 0, err
    contract = {"scene", "bits", "rank", "prune", "psnr", "psnr_original", "ssim", "bytes"}
    assert contract | {"bytes_original", "ratio"} <= set(comp)
    assert comp["bytes"] == out.stat().st_size
    assert comp["ratio"] == pytest.approx(comp["bytes_original"] / comp["bytes"], rel=1e-3)
    rc, dec, err = run(capsys, "decode", str(out), "--json")
    assert rc == 0, err
    assert dec["psnr"] == comp["psnr"]
    assert dec["bytes"] == comp["bytes"] and dec["bits"] == 3
    rc, ev, err = run(capsys, "eval", *args, "--json")
    assert rc == 0, err
    assert ev["bytes"] == comp["bytes"] and ev["psnr"] == comp["psnr"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["eval", "--scene", "nope", "--json"], "unknown scene 'nope'"),
        (["eval", "--scene", "primitives", "--bits", "9"], "bits must be"),
        (["eval", "--scene", "primitives", "--prune", "1.5"], "prune"),
        (["eval", "--scene", "primitives", "--checkpoint", "/no/such.safetensors"], "not found"),
        (["decode", "/no/such.nrc"], "no such file"),
        (["eval", "--bits", "4"], "required: --scene"),
        (["frobnicate"], "invalid choice"),
        (["eval", "--scene", "primitives", "--layer", "trunk.0"], "expected NAME=bits:B"),
        (["eval", "--scene", "primitives", "--layer", "trunk.0=bits:x"], "bits must be a number"),
        (["eval", "--scene", "primitives", "--layer", "nope=bits:4"], "not Linear layers"),
        (["eval", "--scene", "primitives", "--layer", "sigma=bits:9"], "bits must be"),
    ],
)
def test_bad_arguments_give_one_line_errors(capsys, argv, message):
    rc, _, err = run(capsys, *argv)
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("error:")
    assert message in err


def test_corrupt_checkpoint_and_foreign_file(capsys, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 100)
    rc, _, err = run(capsys, "eval", "--scene", "primitives", "--checkpoint", str(bad))
    assert rc == 2 and err.count("\n") == 1 and "safetensors" in err
    foreign = tmp_path / "x.nrc"
    foreign.write_bytes(b"PK\x03\x04 not ours")
    rc, _, err = run(capsys, "decode", str(foreign))
    assert rc == 2 and err.count("\n") == 1


def test_per_layer_overrides_reach_the_file(capsys, tiny_checkpoint, tmp_path):
    out = tmp_path / "mixed.nrc"
    args = ["--scene", "primitives", "--checkpoint", str(tiny_checkpoint), "--bits", "2"]
    layers = ["--layer", "trunk.0=bits:8", "--layer", "rgb=bits:16,rank:0"]
    rc, comp, err = run(capsys, "compress", *args, *layers, "--out", str(out), "--json")
    assert rc == 0, err
    assert comp["layers"]["trunk.0"]["bits"] == 8 and comp["layers"]["rgb"]["bits"] == 16
    from nerfcomp.compress import load

    model = load(out)
    assert len(model.trunk[0].stored["W"].codebook) > 4  # 8 bits, not the default 2
    assert len(model.trunk[1].stored["W"].codebook) <= 4
    assert model.rgb.stored["W"].bits == 16
    rc, dec, err = run(capsys, "decode", str(out), "--json")
    assert rc == 0, err
    assert dec["psnr"] == comp["psnr"] and dec["layers"] == comp["layers"]

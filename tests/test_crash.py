"""Crash safety of the atomic writes, for real: a child process starts writing a file that
already exists, is killed with SIGKILL midway (or just before / just after the rename), and the
file must then hold exactly the old bytes (or, after the rename, exactly the new ones), never a
broken file; a later write must succeed. Covers ``fileio.atomic_write_bytes``,
``model.save_checkpoint`` (the old checkpoint still loads) and the codec's ``save``.

The child pauses at the chosen point by wrapping what the writer calls (``open`` in
``nerfcomp.fileio``, ``save_file`` in ``nerfcomp.model``, ``os.replace``), prints
``ready <temp path> <bytes written>`` and sleeps until the parent kills it."""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nerfcomp.compress import CompressionConfig, compress, encode, load, save
from nerfcomp.fileio import atomic_write_bytes
from nerfcomp.model import NeRF, NeRFConfig, load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
READY_TIMEOUT = 60  # seconds for the child to reach the write: generous on a busy machine
CHILD = r"""
import os, sys, time

kind, stage, target, arg = sys.argv[1:5]
import nerfcomp.fileio as fileio


def hold(tmp, written):
    print(f"ready {tmp} {written}", flush=True)
    time.sleep(120)  # the parent kills us here
    sys.exit("not killed")


if stage == "mid" and kind == "checkpoint":
    import nerfcomp.model as model
    from safetensors.torch import save as to_bytes

    def save_file(tensors, tmp, metadata=None):  # write half of the real file, then stop
        data = to_bytes(tensors, metadata=metadata)
        with open(tmp, "wb") as f:
            f.write(data[: len(data) // 2])
            f.flush()
            hold(tmp, len(data) // 2)

    model.save_file = save_file
elif stage == "mid":
    real_open = open

    class Partial:  # writes the first half of what it is given, then stops
        def __init__(self, f, path):
            self.f, self.path = f, path

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            n = len(data) // 2
            self.f.write(data[:n])
            self.f.flush()
            hold(self.path, n)

    def opener(path, mode="r", *args, **kw):
        f = real_open(path, mode, *args, **kw)
        return Partial(f, path) if "w" in mode else f

    fileio.open = opener  # shadows the builtin inside nerfcomp.fileio only
else:
    real_replace = os.replace

    def replace(src, dst):
        if stage == "after_rename":
            real_replace(src, dst)
        hold(src, os.path.getsize(dst if stage == "after_rename" else src))

    os.replace = replace  # this child process only

if kind == "bytes":
    with open(arg, "rb") as f:
        fileio.atomic_write_bytes(target, f.read())
elif kind == "checkpoint":
    import torch
    from nerfcomp.model import NeRF, NeRFConfig, save_checkpoint

    torch.manual_seed(int(arg))
    save_checkpoint(NeRF(NeRFConfig(width=16)), target)
elif kind == "codec":
    import torch
    from nerfcomp.compress import CompressionConfig, compress, save
    from nerfcomp.model import NeRF, NeRFConfig

    torch.manual_seed(int(arg))
    save(compress(NeRF(NeRFConfig(width=16)), CompressionConfig(bits=4)), target, meta={"s": arg})
print("done", flush=True)  # never reached: every stage holds
"""


def kill_during(tmp_path: Path, kind: str, stage: str, target: Path, arg: str) -> tuple[str, int]:
    """Run the child until it holds at ``stage``, SIGKILL it; → (its temp path, bytes written)."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.Popen(
        [sys.executable, str(script), kind, stage, str(target), arg],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = ""
    try:
        if select.select([proc.stdout], [], [], READY_TIMEOUT)[0]:
            line = proc.stdout.readline()
    finally:
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=30)
    if not line.startswith("ready "):
        pytest.fail(f"the child never reached the write ({line!r}); stderr:\n{err}")
    assert proc.returncode == -signal.SIGKILL
    _, tmp, written = line.split()
    return tmp, int(written)


def visible_files(folder: Path) -> list[str]:
    """What a reader sees: a killed writer may leave a hidden temp file, nothing else."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def nerf(seed: int) -> NeRF:
    torch.manual_seed(seed)
    return NeRF(NeRFConfig(width=16))


@pytest.mark.parametrize(
    "stage, survivor",
    [("mid", "old"), ("before_rename", "old"), ("after_rename", "new")],
)
def test_atomic_write_bytes_killed(tmp_path, stage, survivor):
    out = tmp_path / "out"
    out.mkdir()
    target = out / "table.json"
    old = b"old file " * 1000
    new = random.Random(0).randbytes(3_000_000)
    target.write_bytes(old)
    source = tmp_path / "new.bin"
    source.write_bytes(new)

    tmp, written = kill_during(tmp_path, "bytes", stage, target, str(source))

    if stage == "mid":  # killed with half of the data in the temp file
        assert written == len(new) // 2 and Path(tmp).parent == out
        assert os.path.getsize(tmp) == written
    else:  # killed after the whole file was written (and synced)
        assert written == len(new)
    assert target.read_bytes() == (old if survivor == "old" else new)
    assert visible_files(out) == ["table.json"]
    later = random.Random(1).randbytes(1000)
    assert atomic_write_bytes(target, later) == len(later)
    assert target.read_bytes() == later
    assert visible_files(out) == ["table.json"]


@pytest.mark.parametrize("stage, survivor", [("mid", "old"), ("after_rename", "new")])
def test_save_checkpoint_killed(tmp_path, stage, survivor):
    out = tmp_path / "out"
    out.mkdir()
    target = out / "scene.safetensors"
    old_model, new_model = nerf(0), nerf(1)
    save_checkpoint(old_model, target, extra={"step": 100})
    old = target.read_bytes()

    tmp, written = kill_during(tmp_path, "checkpoint", stage, target, "1")

    if stage == "mid":
        assert 0 < written < len(old) and os.path.getsize(tmp) == written
        assert target.read_bytes() == old
    loaded, extra = load_checkpoint(target)
    want, other = (old_model, new_model) if survivor == "old" else (new_model, old_model)
    assert same_weights(loaded, want) and not same_weights(loaded, other)
    assert extra == ({"step": 100} if survivor == "old" else {})
    assert visible_files(out) == ["scene.safetensors"]
    save_checkpoint(new_model, target, extra={"step": 200})
    loaded, extra = load_checkpoint(target)
    assert same_weights(loaded, new_model) and extra == {"step": 200}


def test_codec_save_killed_mid_write(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    target = out / "scene.nrc"
    old_small = compress(nerf(0), CompressionConfig(bits=4))
    save(old_small, target, meta={"s": "0"})
    old = target.read_bytes()

    tmp, written = kill_during(tmp_path, "codec", "mid", target, "1")

    assert 0 < written and os.path.getsize(tmp) == written
    assert target.read_bytes() == old
    x = torch.rand(20, 3) * 2 - 1
    d = torch.nn.functional.normalize(torch.randn(20, 3), dim=-1)
    again = load(target)
    assert all(torch.equal(a, b) for a, b in zip(again(x, d), old_small(x, d), strict=True))
    assert visible_files(out) == ["scene.nrc"]
    new_small = compress(nerf(1), CompressionConfig(bits=4))
    assert save(new_small, target, meta={"s": "1"}) == os.path.getsize(target)
    assert target.read_bytes() == encode(new_small, {"s": "1"})

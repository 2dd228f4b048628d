"""Uploaded files: a NeRF checkpoint to explore, or a ``.nrc`` file to decode and view.

Everything a user uploads is checked before anything reads it as a model: its size, what
kind of file it really is (pickles and ``torch.save`` archives are refused unread: nothing
here ever unpickles), then the format's own validation (safetensors header and shapes for a
checkpoint, magic, version and CRC for a ``.nrc``), and the architecture against what the
interactive renderer accepts. A rejected upload raises ``ValueError`` with the reason.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["MAX_BYTES", "MAX_DEPTH", "MAX_WIDTH", "check_checkpoint", "check_nrc", "sniff"]

MAX_BYTES = 16 << 20  # a width-256 NeRF checkpoint is ~2.5 MB
MAX_WIDTH, MAX_DEPTH = 256, 12  # what one shared CPU renders interactively

_PICKLE = "nerfcomp never loads pickles; save the weights with safetensors"


def sniff(path: str | os.PathLike, expect: str) -> None:
    """Check that ``path`` is a non-empty file of at most MAX_BYTES that is not a pickle,
    a ``torch.save`` archive or the other kind of nerfcomp file. ``expect``: "checkpoint"
    (safetensors) or "nrc"."""
    from nerfcomp.compress.codec import MAGIC

    path = Path(path)
    name = path.name
    if not path.is_file():
        raise ValueError(f"{name}: no such file")
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"{name}: the file is empty")
    if size > MAX_BYTES:
        raise ValueError(f"{name}: {size / 2**20:.1f} MB is too large (the limit is "
                         f"{MAX_BYTES / 2**20:.0f} MB)")  # fmt: skip
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:4] == b"PK\x03\x04":
        raise ValueError(f"{name}: a zip archive (torch.save's format, which holds a pickle); "
                         f"{_PICKLE}")  # fmt: skip
    if head[:1] == b"\x80" and head[1:2] in {bytes([v]) for v in range(2, 6)}:
        raise ValueError(f"{name}: a Python pickle; {_PICKLE}")
    if expect == "checkpoint" and head.startswith(MAGIC):
        raise ValueError(f"{name}: a compressed .nrc file, not a checkpoint: open it under "
                         f"'Open a .nrc file'")  # fmt: skip
    if expect == "nrc" and _looks_like_safetensors(head, size):
        raise ValueError(f"{name}: a safetensors checkpoint, not a .nrc file: upload it "
                         f"under 'Explore a checkpoint'")  # fmt: skip
    if expect == "nrc" and not head.startswith(MAGIC):
        raise ValueError(f"{name}: not a nerfcomp .nrc file (it does not start with "
                         f"{MAGIC!r})")  # fmt: skip


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    n = int.from_bytes(head[:8], "little")
    return 0 < n < size and head[8:9] == b"{"


def check_checkpoint(path: str | os.PathLike):
    """Validate an uploaded NeRF checkpoint and load it on the CPU: (model, extra metadata)."""
    from nerfcomp.model import load_checkpoint, read_checkpoint_meta

    sniff(path, "checkpoint")
    name = Path(path).name
    try:
        meta = read_checkpoint_meta(path)
    except ValueError as e:
        raise ValueError(_renamed(e, path, name)) from None
    _check_architecture(meta["config"], name)
    try:
        return load_checkpoint(path, "cpu")
    except ValueError as e:
        raise ValueError(_renamed(e, path, name)) from None


def check_nrc(path: str | os.PathLike):
    """Validate an uploaded ``.nrc`` file and decode it on the CPU: (model, header meta).
    The header must name a shipped scene, whose ground truth scores the model."""
    from nerfcomp import scenes
    from nerfcomp.compress import codec
    from nerfcomp.model import NeRF

    sniff(path, "nrc")
    name = Path(path).name
    data = Path(path).read_bytes()
    try:
        meta = codec.read_header(data).get("meta") or {}
        model = codec.decode(data)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None
    if not isinstance(model, NeRF):
        raise ValueError(f"{name}: holds a {type(model).__name__}, not a NeRF this app renders")
    _check_architecture(model.config.__dict__, name)
    scene = meta.get("scene")
    if scene not in scenes.SCENES:
        known = ", ".join(scenes.SCENES)
        raise ValueError(f"{name}: its header names scene {scene!r}, not one of {known}")
    return model, meta


def _check_architecture(config: dict, name: str) -> None:
    width, depth = config.get("width"), config.get("depth")
    if isinstance(width, int) and width > MAX_WIDTH:
        raise ValueError(f"{name}: width {width} is more than this app renders "
                         f"interactively (at most {MAX_WIDTH})")  # fmt: skip
    if isinstance(depth, int) and depth > MAX_DEPTH:
        raise ValueError(f"{name}: depth {depth} is more than this app renders "
                         f"interactively (at most {MAX_DEPTH})")  # fmt: skip


def _renamed(e: ValueError, path, name: str) -> str:
    """The error's text with the (temporary, server-side) path replaced by the file name."""
    return str(e).replace(str(path), name)

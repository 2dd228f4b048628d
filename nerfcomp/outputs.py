"""Files the explorer hands to Gradio: videos, exports and preview PNGs.

Gradio copies each returned file into its own cache while answering the call, so these live
only briefly: the last few outputs are kept, PNGs unused for ``_PNG_MAX_AGE_S`` are swept, and
the folder goes at exit. PNGs are written atomically (``nerfcomp.fileio``): two calls may
return the same one.
"""

from __future__ import annotations

import atexit
import hashlib
import io
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

from PIL import Image

from nerfcomp.fileio import atomic_write_bytes

__all__ = ["output_path", "png", "tmp_dir"]

_outputs: list[str] = []  # files handed to Gradio (it copies them to its cache); the last few kept
_KEEP_FILES = 8
_tmpdir: str | None = None
_lock = threading.RLock()  # guards the temp folder, the output list and the counter


def tmp_dir() -> str:
    """This process's temp folder for outputs, removed at exit."""
    global _tmpdir
    with _lock:
        if _tmpdir is None:
            _tmpdir = tempfile.mkdtemp(prefix="nerfcomp-app-")
            atexit.register(shutil.rmtree, _tmpdir, True)
    return _tmpdir


def output_path(name: str) -> str:
    """A path in this process's temp folder; older outputs are deleted."""
    with _lock:
        while len(_outputs) >= _KEEP_FILES:
            old = _outputs.pop(0)
            if os.path.exists(old):
                os.remove(old)
        path = os.path.join(tmp_dir(), f"{len(_outputs)}-{time.time_ns()}-{name}")
        _outputs.append(path)
    return path


_PNG_MAX_AGE_S = 600  # Gradio copies each returned file into its own cache at once
_png_written = 0


def png(image) -> str:
    """``image`` (H, W, 3) uint8 as a PNG file, named by its content and written atomically.

    Returning files rather than arrays matters under load: Gradio rewrites an array's cache
    file in place every time the same image is returned again, so a client still downloading
    it from an earlier call gets a truncated response; a returned file is copied into
    Gradio's cache atomically instead. Files older than ``_PNG_MAX_AGE_S`` are removed."""
    global _png_written
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="png")
    data = buf.getvalue()
    path = Path(tmp_dir()) / "png" / f"{hashlib.sha256(data).hexdigest()[:32]}.png"
    try:
        os.utime(path)  # in use again: not swept below
    except OSError:
        atomic_write_bytes(path, data)
    with _lock:
        _png_written += 1
        sweep = _png_written % 64 == 0
    if sweep:
        cutoff = time.time() - _PNG_MAX_AGE_S
        for old in path.parent.glob("*.png"):
            try:
                if old.stat().st_mtime < cutoff:
                    old.unlink()
            except OSError:
                pass  # another thread removed it
    return str(path)

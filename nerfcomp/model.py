"""The NeRF MLP (Mildenhall et al. 2020, §5.1 and Fig. 7) and its checkpoint I/O.

Checkpoints are safetensors files: tensors by name, the config as JSON in the metadata.
Loading never unpickles.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from nerfcomp.fileio import atomic_write

__all__ = ["NeRF", "NeRFConfig", "encode_positions", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_FORMAT = "nerfcomp-nerf-v1"


@dataclass(frozen=True)
class NeRFConfig:
    """Architecture of the MLP. Width 128 keeps a 128×128 view under 0.3 s on 2 CPU cores."""

    width: int = 128
    depth: int = 8  # trunk layers
    skip: int = 4  # the input is concatenated again before trunk layer `skip`
    pos_freqs: int = 10  # L for position, NeRF §5.1
    dir_freqs: int = 4  # L for viewing direction
    aabb: float = 1.0  # scene cube [-aabb, aabb]^3

    def __post_init__(self) -> None:
        for name, lo, hi in [
            ("width", 4, 4096),
            ("depth", 2, 64),
            ("pos_freqs", 0, 32),
            ("dir_freqs", 0, 32),
        ]:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                raise ValueError(f"NeRFConfig.{name} must be an int in [{lo}, {hi}], got {v!r}")
        if not isinstance(self.skip, int) or not 0 < self.skip < self.depth:
            raise ValueError(f"NeRFConfig.skip must be in [1, depth-1], got {self.skip!r}")
        if not (isinstance(self.aabb, int | float) and math.isfinite(self.aabb) and self.aabb > 0):
            raise ValueError(f"NeRFConfig.aabb must be a positive number, got {self.aabb!r}")

    @property
    def pos_dim(self) -> int:
        return 3 + 6 * self.pos_freqs

    @property
    def dir_dim(self) -> int:
        return 3 + 6 * self.dir_freqs

    @classmethod
    def from_dict(cls, d: dict) -> NeRFConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown NeRF config fields: {sorted(unknown)}")
        return cls(**d)


def encode_positions(x: Tensor, n_freqs: int) -> Tensor:
    """Positional encoding γ(x) = (x, sin(2^k π x), cos(2^k π x)), k < L (NeRF §5.1).

    x: (..., 3) → (..., 3 + 6L).
    """
    if n_freqs == 0:
        return x
    freqs = 2.0 ** torch.arange(n_freqs, device=x.device, dtype=x.dtype) * math.pi  # (L,)
    xf = (x[..., None, :] * freqs[:, None]).flatten(-2)  # (..., 3L)
    return torch.cat([x, torch.sin(xf), torch.cos(xf)], dim=-1)


class NeRF(nn.Module):
    """Trunk of ``depth`` ReLU layers with a skip, a density head, and a view-dependent
    colour branch: 12 Linear layers at the default config (trunk.0-7, sigma, feature,
    view, rgb)."""

    def __init__(self, config: NeRFConfig = NeRFConfig()) -> None:
        super().__init__()
        self.config = config
        c = config
        ins = [c.pos_dim] + [c.width + (c.pos_dim if i == c.skip else 0) for i in range(1, c.depth)]
        self.trunk = nn.ModuleList(nn.Linear(n, c.width) for n in ins)
        self.sigma = nn.Linear(c.width, 1)
        self.feature = nn.Linear(c.width, c.width)
        self.view = nn.Linear(c.width + c.dir_dim, c.width // 2)
        self.rgb = nn.Linear(c.width // 2, 3)

    def _trunk(self, x: Tensor) -> Tensor:
        x = x / self.config.aabb  # scene cube → [-1, 1]^3
        enc = encode_positions(x, self.config.pos_freqs)  # (n, 63)
        h = enc
        for i, layer in enumerate(self.trunk):
            if i == self.config.skip:
                h = torch.cat([h, enc], dim=-1)
            h = F.relu(layer(h))
        return h  # (n, width)

    def density(self, x: Tensor) -> Tensor:
        """x: (n, 3) points → σ: (n,) ≥ 0."""
        return F.softplus(self.sigma(self._trunk(x)).squeeze(-1))

    def forward(self, x: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
        """x: (n, 3) points, d: (n, 3) unit directions → rgb (n, 3) in [0, 1], σ (n,)."""
        h = self._trunk(x)
        sigma = F.softplus(self.sigma(h).squeeze(-1))
        feat = self.feature(h)
        v = F.relu(self.view(torch.cat([feat, encode_positions(d, self.config.dir_freqs)], -1)))
        return torch.sigmoid(self.rgb(v)), sigma

    # the codec stores compressed NeRFs by this description, never by pickling
    def arch_spec(self) -> dict:
        return asdict(self.config)

    @classmethod
    def from_arch_spec(cls, spec: dict) -> NeRF:
        return cls(NeRFConfig.from_dict(spec))


def save_checkpoint(model: NeRF, path: str | os.PathLike, extra: dict | None = None) -> int:
    """Write the weights (float32) and config; returns the file's size in bytes."""
    meta = {
        "format": CHECKPOINT_FORMAT,
        "config": json.dumps(asdict(model.config)),
        "extra": json.dumps(extra or {}),
    }
    tensors = {
        k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()
    }
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
    return os.path.getsize(path)


def read_checkpoint_meta(path: str | os.PathLike) -> dict:
    """The metadata of a checkpoint (format, config, extra), validated."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable safetensors checkpoint ({e})") from None
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a nerfcomp NeRF checkpoint (format {meta.get('format')!r})")
    try:
        meta["config"] = json.loads(meta["config"])
        meta["extra"] = json.loads(meta.get("extra", "{}"))
    except (KeyError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: checkpoint metadata is corrupt ({e})") from None
    if not isinstance(meta["config"], dict) or not isinstance(meta["extra"], dict):
        raise ValueError(f"{path}: checkpoint metadata is corrupt (config must be an object)")
    return meta


def load_checkpoint(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[NeRF, dict]:
    """Load a checkpoint → (model in eval mode, extra metadata). Raises ValueError naming
    the problem for a missing, corrupt or foreign file, or one whose shapes do not match."""
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint not found: {path}")
    meta = read_checkpoint_meta(path)
    try:
        config = NeRFConfig.from_dict(meta["config"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: bad NeRF config in checkpoint ({e})") from None
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path}: checkpoint tensors are unreadable ({e})") from None
    model = NeRF(config)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    got = {k: v.shape for k, v in tensors.items()}
    if expected != got:
        bad = sorted(k for k in expected.keys() | got.keys() if expected.get(k) != got.get(k))
        raise ValueError(f"{path}: tensor shapes do not match the config at {bad[:4]}")
    if not all(torch.isfinite(v).all() for v in tensors.values()):
        raise ValueError(f"{path}: checkpoint holds non-finite weights")
    model.load_state_dict(tensors)
    return model.to(device).eval(), meta["extra"]

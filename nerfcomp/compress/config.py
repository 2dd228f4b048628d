"""What to compress and how much: a validated, hashable value (torchao's ``AOBaseConfig``).

The engine uses a ``CompressionConfig`` as a cache key, so it is frozen and hashable, and it
round-trips through JSON with ``to_dict`` / ``from_dict``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Any, NamedTuple

__all__ = ["ALLOWED_BITS", "CompressionConfig", "LayerConfig", "ResolvedLayer"]

ALLOWED_BITS = (1, 2, 3, 4, 5, 6, 7, 8, 16, 32)  # 1..8: k-means; 16: fp16 cast; 32: float32


def _check_bits(owner: str, bits: Any) -> int:
    if not isinstance(bits, Integral) or isinstance(bits, bool) or int(bits) not in ALLOWED_BITS:
        raise ValueError(f"{owner}.bits must be an int in 1..8, 16 or 32, got {bits!r}")
    return int(bits)


def _check_rank(owner: str, rank: Any, low: int) -> int | None:
    if rank is None:
        return None
    if not isinstance(rank, Integral) or isinstance(rank, bool) or int(rank) < low:
        raise ValueError(f"{owner}.rank must be None or an int >= {low}, got {rank!r}")
    return int(rank)


def _check_prune(owner: str, prune: Any) -> float:
    ok = isinstance(prune, Real) and not isinstance(prune, bool)
    if not ok or not math.isfinite(float(prune)) or not 0.0 <= float(prune) < 1.0:
        raise ValueError(f"{owner}.prune must be a finite float in [0, 1), got {prune!r}")
    return float(prune)


class ResolvedLayer(NamedTuple):
    """The settings one layer gets: bits, rank (None = keep dense), prune fraction."""

    bits: int
    rank: int | None
    prune: float


@dataclass(frozen=True)
class LayerConfig:
    """Per-layer override; a None field inherits the global value.

    ``rank=0`` keeps this layer dense even when the global config sets a rank.
    """

    bits: int | None = None
    rank: int | None = None
    prune: float | None = None

    def __post_init__(self) -> None:
        if self.bits is not None:
            object.__setattr__(self, "bits", _check_bits("LayerConfig", self.bits))
        object.__setattr__(self, "rank", _check_rank("LayerConfig", self.rank, low=0))
        if self.prune is not None:
            object.__setattr__(self, "prune", _check_prune("LayerConfig", self.prune))

    def to_dict(self) -> dict[str, Any]:
        return {"bits": self.bits, "rank": self.rank, "prune": self.prune}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LayerConfig:
        unknown = set(d) - {"bits", "rank", "prune"}
        if unknown:
            raise ValueError(f"unknown LayerConfig fields: {sorted(unknown)}")
        return cls(**d)


class FrozenMap(Mapping[str, LayerConfig]):
    """An immutable, hashable str → LayerConfig mapping (so the config can be a cache key)."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, LayerConfig] | None = None) -> None:
        self._items: dict[str, LayerConfig] = dict(sorted((items or {}).items()))

    def __getitem__(self, key: str) -> LayerConfig:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(tuple(self._items.items()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self.items()) == dict(other.items())

    def __repr__(self) -> str:
        return f"FrozenMap({self._items!r})"


def _check_layers(layers: Any) -> FrozenMap:
    if not isinstance(layers, Mapping):
        raise ValueError(
            f"CompressionConfig.layers must be a mapping name → LayerConfig, got "
            f"{type(layers).__name__}"
        )
    out: dict[str, LayerConfig] = {}
    for name, lc in layers.items():
        if not isinstance(name, str):
            raise ValueError(f"CompressionConfig.layers keys must be str, got {name!r}")
        if isinstance(lc, Mapping):
            lc = LayerConfig.from_dict(lc)
        if not isinstance(lc, LayerConfig):
            raise ValueError(
                f"CompressionConfig.layers[{name!r}] must be a LayerConfig, got {type(lc).__name__}"
            )
        out[name] = lc
    return FrozenMap(out)


@dataclass(frozen=True)
class CompressionConfig:
    """The hybrid scheme's knobs (DESIGN.md): per nn.Linear, rank → prune → k-means.

    bits: 1..8 k-means codebook of 2^bits values; 16 fp16 cast; 32 float32 as is.
    rank: None keeps every layer dense; r ≥ 1 factorizes W (m×n) into A (m×r)·B (r×n) where
        r·(m + n) < m·n, else the layer stays dense.
    prune: fraction of each stored tensor's weights set to zero, in [0, 1).
    admm_steps: learning–compression steps run by the engine before projecting (0 = instant
        path); ``compress`` itself only projects.
    layers: overrides by the module's qualified name, e.g. {"trunk.3": LayerConfig(bits=8)}.
    """

    bits: int = 32
    rank: int | None = None
    prune: float = 0.0
    admm_steps: int = 0
    layers: Mapping[str, LayerConfig] = field(default=FrozenMap())

    def __post_init__(self) -> None:
        object.__setattr__(self, "bits", _check_bits("CompressionConfig", self.bits))
        object.__setattr__(self, "rank", _check_rank("CompressionConfig", self.rank, low=1))
        object.__setattr__(self, "prune", _check_prune("CompressionConfig", self.prune))
        steps = self.admm_steps
        if not isinstance(steps, Integral) or isinstance(steps, bool) or int(steps) < 0:
            raise ValueError(f"CompressionConfig.admm_steps must be an int >= 0, got {steps!r}")
        object.__setattr__(self, "admm_steps", int(steps))
        object.__setattr__(self, "layers", _check_layers(self.layers))

    def for_layer(self, name: str) -> ResolvedLayer:
        """The settings of the layer with qualified name `name` (overrides applied)."""
        lc = self.layers.get(name, LayerConfig())
        rank = self.rank if lc.rank is None else (lc.rank or None)
        return ResolvedLayer(
            bits=self.bits if lc.bits is None else lc.bits,
            rank=rank,
            prune=self.prune if lc.prune is None else lc.prune,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form; ``CompressionConfig.from_dict(cfg.to_dict()) == cfg``."""
        return {
            "bits": self.bits,
            "rank": self.rank,
            "prune": self.prune,
            "admm_steps": self.admm_steps,
            "layers": {name: lc.to_dict() for name, lc in self.layers.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CompressionConfig:
        unknown = set(d) - {"bits", "rank", "prune", "admm_steps", "layers"}
        if unknown:
            raise ValueError(f"unknown CompressionConfig fields: {sorted(unknown)}")
        return cls(**d)

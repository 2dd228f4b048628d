"""The cached, incremental engine that the UI and the CLI call.

Per base model (a shipped scene's NeRF, or an uploaded checkpoint) it keeps:

- the SVD of every Linear layer, computed once;
- the tensors to store per (layer, rank, prune) and their k-means per (layer, tensor, rank,
  prune, bits), so moving one slider re-runs only what that slider changed;
- assembled compressed models with their encoded file, occupancy grid and renders;
- ADMM-refined models, which are expensive and kept apart from the cheap ones.

Every cache is an LRU bounded in bytes. The engine is shared by all UI sessions: a lock
guards the caches, heavy work runs outside it, and ``counters`` counts the work done (tests
check incrementality with it, not with timings).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from nerfcomp import scenes
from nerfcomp.compress.allocate import (
    Probe,
    SensitivityTable,
    candidate_settings,
    sensitivity_table,
)
from nerfcomp.compress.auto import AutoResult, auto_allocate
from nerfcomp.compress.codec import encode_with_breakdown
from nerfcomp.compress.config import CompressionConfig, ResolvedLayer
from nerfcomp.compress.layers import (
    CompressedLinear,
    StoredTensor,
    linear_names,
    quantize_stored,
    replace_linears,
    tensors_to_store,
)
from nerfcomp.compress.lowrank import factors_are_smaller, svd_from_weight
from nerfcomp.evaluate import Rendered, evaluate_model, grid_for, render_view
from nerfcomp.metrics import mse_to_psnr
from nerfcomp.model import NeRF, load_checkpoint
from nerfcomp.render import OccupancyGrid, RenderSettings, render_rays

log = logging.getLogger(__name__)

__all__ = ["Base", "Compressed", "Engine", "ByteLRU", "resolve_device"]


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """CUDA when present unless told otherwise."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but CUDA is not available")
    return device


def nbytes_of(obj) -> int:
    """Approximate memory held by a cached value (tensors, modules, bytes, containers)."""
    if isinstance(obj, Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, nn.Module):
        return sum(nbytes_of(t) for t in [*obj.parameters(), *obj.buffers()])
    if isinstance(obj, bytes | bytearray):
        return len(obj)
    if isinstance(obj, StoredTensor):
        return sum(
            nbytes_of(t) for t in (obj.codebook, obj.indices, obj.mask, obj.values) if t is not None
        )
    if isinstance(obj, dict):
        return sum(nbytes_of(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(nbytes_of(v) for v in obj)
    if hasattr(obj, "__dataclass_fields__"):
        return sum(nbytes_of(getattr(obj, f)) for f in obj.__dataclass_fields__)
    return 64


def tensor_digest(module: nn.Module) -> str:
    """SHA-256 of a module's named tensors: equal digests, equal outputs."""
    h = hashlib.sha256()
    for key, t in module.state_dict().items():
        h.update(key.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class ByteLRU:
    """A thread-safe least-recently-used cache bounded by the bytes of its values."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._data: OrderedDict[Hashable, tuple[object, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes = 0

    def get(self, key: Hashable):
        with self._lock:
            if key not in self._data:
                return None
            self._data.move_to_end(key)
            return self._data[key][0]

    def put(self, key: Hashable, value) -> None:
        size = nbytes_of(value)
        with self._lock:
            if key in self._data:
                self.bytes -= self._data.pop(key)[1]
            self._data[key] = (value, size)
            self.bytes += size
            while self.bytes > self.max_bytes and len(self._data) > 1:
                _, (_, s) = self._data.popitem(last=False)
                self.bytes -= s

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._data


@dataclass(eq=False)
class Base:
    """A base (uncompressed) model and what is derived from it once."""

    name: str  # scene name, or "upload:<sha>" for an uploaded checkpoint
    scene: str  # the scene whose ground truth scores it
    model: NeRF
    bytes_original: int  # size of its float32 checkpoint file
    sha256: str = ""  # tensor_digest of its weights: names a sweep table's model
    svds: dict[str, tuple[Tensor, Tensor, Tensor]] = field(default_factory=dict)


@dataclass(eq=False)
class Compressed:
    """A compressed model with its file."""

    base: str
    config: CompressionConfig
    model: nn.Module
    payload: bytes  # exactly what `save` writes
    breakdown: dict  # layer → part → bytes
    digest: str = ""  # of the model's tensors: equal digests, equal outputs

    @property
    def bytes(self) -> int:
        return len(self.payload)


class Engine:
    """Compresses, renders and scores NeRFs, caching every intermediate result."""

    def __init__(
        self,
        device: str | torch.device | None = None,
        cache_bytes: int = 512 << 20,
        settings: RenderSettings = RenderSettings(),
        max_uploads: int = 4,
    ) -> None:
        self.device = resolve_device(device)
        self.settings = settings
        self.counters: Counter[str] = Counter()
        self._lock = threading.RLock()
        self._bases: dict[str, Base] = {}  # insertion order: oldest upload first
        self.max_uploads = max_uploads
        self._stage1 = ByteLRU(cache_bytes // 8)  # (base, layer, rank, prune) → tensors to store
        self._parts = ByteLRU(
            cache_bytes // 8
        )  # (base, layer, part, rank, prune, bits) → StoredTensor
        self._models = ByteLRU(cache_bytes // 4)  # (base, cfg) → Compressed
        self._refined = ByteLRU(cache_bytes // 8)  # (base, cfg) → Compressed (ADMM)
        self._grids = ByteLRU(cache_bytes // 8)  # (base, cfg|None) → OccupancyGrid
        self._renders = ByteLRU(cache_bytes // 4)  # (base, cfg|None, camera key) → Rendered
        self._scores = ByteLRU(1 << 20)  # (base, cfg|None, kind) → metrics dict
        self._tables = ByteLRU(8 << 20)  # (base, sha, rays, samples) → SensitivityTable
        self._tables_lock = threading.Lock()  # one sensitivity pass at a time

    # --- base models ---------------------------------------------------------------------

    def base(self, name: str) -> Base:
        """The base model of a shipped scene (loaded lazily) or of a registered upload."""
        with self._lock:
            if name in self._bases:
                return self._bases[name]
            scene = scenes.get_scene(name)
            if not scene.checkpoint.exists():
                raise ValueError(
                    f"no checkpoint for scene {name!r} at {scene.checkpoint}; "
                    f"train one with: python -m nerfcomp train --scene {name}"
                )
            model, _ = load_checkpoint(scene.checkpoint, self.device)
            return self._add_base(name, name, model, os.path.getsize(scene.checkpoint))

    def add_upload(self, path: str | os.PathLike, scene: str, model: NeRF | None = None) -> str:
        """Register an uploaded checkpoint (validated by ``load_checkpoint`` unless ``model``
        is its already validated model) scored against ``scene``'s ground truth; returns its
        base name. The last ``max_uploads`` uploads are kept; older ones are dropped."""
        scenes.get_scene(scene)
        if not os.path.isfile(path):
            raise ValueError(f"checkpoint not found: {path}")
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()[:12]
        name = f"upload:{digest}:{scene}"
        with self._lock:
            if name in self._bases:
                self._bases[name] = self._bases.pop(name)  # most recent last
                return name
            if model is None:
                model, _ = load_checkpoint(path, self.device)
            self._add_base(name, scene, model.to(self.device).eval(), os.path.getsize(path))
            uploads = [n for n in self._bases if n.startswith("upload:")]
            for old in uploads[: max(0, len(uploads) - self.max_uploads)]:
                del self._bases[old]
        return name

    def has_base(self, name: str) -> bool:
        """Whether ``name`` is a registered upload or a loaded scene."""
        with self._lock:
            return name in self._bases

    def _add_base(self, name: str, scene: str, model: NeRF, nbytes: int) -> Base:
        base = Base(name, scene, model, nbytes, tensor_digest(model))
        for lname in linear_names(model):
            base.svds[lname] = svd_from_weight(model.get_submodule(lname).weight.detach())
            self.counters["svd"] += 1
        self._bases[name] = base
        return base

    # --- compression ---------------------------------------------------------------------

    def _effective_rank(self, base: Base, layer: str, rank: int | None) -> int | None:
        """The rank a layer really keeps: None where it stays dense."""
        m, n = base.model.get_submodule(layer).weight.shape
        return rank if rank is not None and factors_are_smaller(m, n, rank) else None

    def _layer_parts(
        self, base: Base, cfg: CompressionConfig
    ) -> dict[str, dict[str, StoredTensor]]:
        """Stored tensors of every layer under ``cfg``, from the caches (see _stored_parts)."""
        names = linear_names(base.model)
        parts = self._stored_parts(base, [(layer, cfg.for_layer(layer)) for layer in names])
        return dict(zip(names, parts, strict=True))

    def _stored_parts(
        self, base: Base, wanted: list[tuple[str, ResolvedLayer]]
    ) -> list[dict[str, StoredTensor]]:
        """Stored tensors of each (layer, setting), from the caches; one batched k-means for
        all that are missing."""
        plan: list[dict[str, StoredTensor]] = []
        missing = []
        for layer, lc in wanted:
            rank = self._effective_rank(base, layer, lc.rank)
            key1 = (base.name, layer, rank, lc.prune)
            items = self._stage1.get(key1)
            if items is None:
                weight = base.model.get_submodule(layer).weight.detach()
                items = tensors_to_store(weight, rank, lc.prune, base.svds[layer])
                self._stage1.put(key1, items)
                self.counters["stage1"] += 1
            parts: dict[str, StoredTensor] = {}
            for part, item in items.items():
                key2 = (base.name, layer, part, rank, lc.prune, lc.bits)
                stored = self._parts.get(key2)
                parts[part] = stored
                if stored is None:
                    missing.append((parts, part, key2, item, lc.bits))
            plan.append(parts)
        if missing:
            quantized = quantize_stored([m[3] for m in missing], [m[4] for m in missing])
            self.counters["kmeans_tensors"] += sum(1 for m in missing if m[4] <= 8)
            self.counters["quantize_calls"] += 1
            for (parts, part, key2, _, _), stored in zip(missing, quantized, strict=True):
                self._parts.put(key2, stored)
                parts[part] = stored
        return plan

    def compress(
        self,
        name: str,
        cfg: CompressionConfig,
        progress: Callable[[float, str], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> Compressed:
        """The compressed model of base ``name`` under ``cfg``: the instant path (SVD
        truncation, pruning, k-means) or, with ``cfg.admm_steps``, ADMM refinement."""
        base = self.base(name)
        unknown = sorted(set(cfg.layers) - set(linear_names(base.model)))
        if unknown:
            raise ValueError(
                f"layer overrides name {unknown}, not Linear layers of the model "
                f"({', '.join(linear_names(base.model))})"
            )
        key = (base.name, cfg)
        cache = self._refined if cfg.admm_steps else self._models
        hit = cache.get(key)
        if hit is not None:
            return hit
        if cfg.admm_steps:
            from nerfcomp.compress.admm import refine

            model = refine(base.model, cfg, base.scene, self.settings, progress, cancel)
            self.counters["admm"] += 1
        else:
            parts = self._layer_parts(base, cfg)
            modules = {
                layer: CompressedLinear.from_linear(
                    base.model.get_submodule(layer), stored, cfg.for_layer(layer).bits
                )
                for layer, stored in parts.items()
            }
            model = replace_linears(base.model, modules).eval()
            self.counters["assemble"] += 1
        payload, breakdown = encode_with_breakdown(
            model, {"scene": base.scene, "config": cfg.to_dict()}
        )
        result = Compressed(base.name, cfg, model, payload, breakdown, tensor_digest(model))
        self.counters["encode"] += 1
        cache.put(key, result)
        return result

    def cached(self, name: str, cfg: CompressionConfig) -> Compressed | None:
        """The compressed model if it is already in the caches (never computes one)."""
        cache = self._refined if cfg.admm_steps else self._models
        return cache.get((self.base(name).name, cfg))

    # --- rendering and scores ------------------------------------------------------------

    def _model(self, name: str, cfg: CompressionConfig | None) -> nn.Module:
        if cfg is None:
            return self.base(name).model
        return self.compress(name, cfg).model

    def _same(self, name: str, cfg: CompressionConfig | None) -> tuple:
        """The cache key of what a model computes: settings that give identical tensors
        (ranks at which no layer factorizes, say) share grids, renders and scores."""
        if cfg is None:
            return (name, None)
        return (name, self.compress(name, cfg).digest)

    def _memo(self, cache: ByteLRU, key: tuple, counter: str, compute: Callable[[], object]):
        """``cache[key]``, computed (and counted under ``counter``) on a miss."""
        hit = cache.get(key)
        if hit is None:
            hit = compute()
            self.counters[counter] += 1
            cache.put(key, hit)
        return hit

    def grid(self, name: str, cfg: CompressionConfig | None) -> OccupancyGrid:
        """The occupancy grid of that model, from its own density."""
        key = self._same(name, cfg)
        return self._memo(self._grids, key, "grid", lambda: grid_for(self._model(name, cfg)))

    def render(self, name: str, cfg: CompressionConfig | None, camera: scenes.Camera) -> Rendered:
        """A view of the original (cfg None) or compressed model; cached per camera."""
        key = (*self._same(name, cfg), camera.c2w.numpy().tobytes(), camera.height, camera.width)

        def compute() -> Rendered:
            model, grid = self._model(name, cfg), self.grid(name, cfg)
            return render_view(model, camera, grid, self.settings)

        return self._memo(self._renders, key, "render", compute)

    def score(self, name: str, cfg: CompressionConfig | None, size: int = 100) -> dict:
        """PSNR/SSIM over every held-out test view (exact)."""
        key = (*self._same(name, cfg), "exact", size)

        def compute() -> dict:
            model, grid = self._model(name, cfg), self.grid(name, cfg)
            return evaluate_model(model, self._scene_of(name), size, self.settings, grid)

        return self._memo(self._scores, key, "score", compute)

    def score_fast(self, name: str, cfg: CompressionConfig | None, n_rays: int = 4096) -> float:
        """PSNR on a fixed subset of ``n_rays`` held-out test rays (same rays every call)."""
        key = (*self._same(name, cfg), "fast", n_rays)

        def compute() -> float:
            origins, dirs, target = _test_ray_subset(self._scene_of(name), n_rays)
            model, grid, dev = self._model(name, cfg), self.grid(name, cfg), self.device
            with torch.no_grad():
                color, _ = render_rays(model, origins.to(dev), dirs.to(dev), self.settings, grid)
            mse = torch.mean((color.cpu().clamp(0, 1).double() - target.double()) ** 2).item()
            return round(mse_to_psnr(mse), 3)

        return self._memo(self._scores, key, "score_fast", compute)

    def readout(self, name: str, cfg: CompressionConfig) -> dict:
        """The CLI contract's fields (DESIGN.md): exact scores of the original and the
        compressed model on every held-out view, and the bytes of the file."""
        orig, score = self.score(name, None), self.score(name, cfg)
        base, comp = self.base(name), self.compress(name, cfg)
        return {
            "scene": base.scene,
            **{k: v for k, v in cfg.to_dict().items() if k != "layers" or v},
            "psnr": score["psnr"],
            "psnr_original": orig["psnr"],
            "psnr_percent": round(100 * score["psnr"] / orig["psnr"], 2),
            "ssim": score["ssim"],
            "ssim_original": orig["ssim"],
            "bytes": comp.bytes,
            "bytes_original": base.bytes_original,
            "ratio": round(base.bytes_original / comp.bytes, 3),
            "render_ms": score["render_ms"],
            "test_views": score["test_views"],
            "device": str(self.device),
        }

    # --- per-layer allocation ------------------------------------------------------------

    def sensitivity(
        self,
        name: str,
        progress: Callable[[float, str], None] | None = None,
        cancel: threading.Event | None = None,
        n_rays: int = 2048,
        max_samples: int = 8192,
    ) -> SensitivityTable:
        """Bytes and probe error of every layer's candidate settings (``allocate.py``),
        measured once per base model on up to ``n_rays`` fixed held-out rays (fewer where
        their visible samples would pass ``max_samples``)."""
        base = self.base(name)
        key = self._table_key(name, n_rays, max_samples)
        with self._tables_lock:
            hit = self._tables.get(key)
            if hit is not None:
                return hit
            model = copy.deepcopy(base.model)  # the probe swaps its layers in and out
            origins, dirs, target = _test_ray_subset(base.scene, n_rays)
            dev = self.device
            grid = self.grid(name, None)
            probe = Probe(
                model, origins.to(dev), dirs.to(dev), target, grid, self.settings, max_samples
            )
            settings = {
                layer: candidate_settings(tuple(model.get_submodule(layer).weight.shape))
                for layer in linear_names(model)
            }
            table = sensitivity_table(
                model, probe, settings, lambda w: self._stored_parts(base, w), progress, cancel
            )
            fp16 = ResolvedLayer(16, None, 0.0)
            layers = sum(next(b for s, b, _ in rows if s == fp16) for rows in table.rows.values())
            table.fixed_bytes = self.compress(name, CompressionConfig(bits=16)).bytes - layers
            self.counters["sensitivity"] += 1
            self._tables.put(key, table)
            return table

    def cached_sensitivity(
        self, name: str, n_rays: int = 2048, max_samples: int = 8192
    ) -> SensitivityTable | None:
        """The sensitivity table if it has been measured (never measures it)."""
        return self._tables.get(self._table_key(name, n_rays, max_samples))

    def _table_key(self, name: str, n_rays: int, max_samples: int) -> tuple:
        base = self.base(name)
        return (base.name, base.sha256, n_rays, max_samples)

    def auto(self, name: str, **kwargs) -> AutoResult:
        """Per-layer settings for a target, verified (``auto.auto_allocate``'s arguments)."""
        return auto_allocate(self, name, **kwargs)

    def _scene_of(self, name: str) -> str:
        return self.base(name).scene


def _test_ray_subset(scene: str, n_rays: int, size: int = 100) -> tuple[Tensor, Tensor, Tensor]:
    """A fixed, seeded subset of the test views' rays: origins, dirs, ground-truth rgb."""
    origins, dirs, rgb = scenes.views(scene, "test", size).rays()
    g = torch.Generator().manual_seed(1234)
    pick = torch.randperm(origins.shape[0], generator=g)[:n_rays].sort().values
    return origins[pick], dirs[pick], rgb[pick]

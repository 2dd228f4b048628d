"""The .nrc file format: a compressed model as bytes, and back, without pickles.

Layout (all integers little-endian)::

    magic b"NRC\\x00" | version u16 | file length u32 | header length u32
    | header: zlib(compact JSON: architecture, per-layer shapes / bits / layouts / stream sizes)
    | payload: per layer, per stored tensor: codebook, symbol streams, raw values; then the bias;
      then the non-Linear parameters of opt-in modules
    | CRC32 u32 of everything before it

A quantized tensor is a codebook (fp16 when exact, else fp32) and one symbol per weight. With a
pruning mask the symbols are either folded (0 = pruned, 1..k = centroid) or split into a mask
stream and an index stream of the kept weights, whichever is smaller. Each symbol stream is
either bit-packed or range-coded (constriction) with a static model: the empirical histogram,
stored as varints, from which encoder and decoder build the very same Categorical. Float tensors
(bits 16 / 32) and biases are raw fp16 (when exact) or fp32 arrays, optionally mask + kept values.
"""

from __future__ import annotations

import importlib
import json
import os
import struct
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field

import constriction
import numpy as np
import torch
from torch import nn

from nerfcomp.compress.config import CompressionConfig
from nerfcomp.compress.layers import CompressedLinear, StoredTensor, compress, replace_linears
from nerfcomp.fileio import atomic_write_bytes

__all__ = [
    "MAGIC",
    "PARTS",
    "VERSION",
    "decode",
    "encode",
    "entropy_bound",
    "load",
    "layer_nbytes",
    "read_header",
    "register_architecture",
    "save",
    "size_breakdown",
]

MAGIC = b"NRC\x00"
VERSION = 1
PARTS = ("indices", "codebooks", "factors", "masks", "biases", "dense", "params", "header")
FILE_ROW = "(file)"  # size_breakdown's row for the header, CRC and non-Linear parameters
_PREAMBLE = struct.Struct("<4sHII")  # magic, version, file length, header length
_CRC = struct.Struct("<I")
_MAX_HEADER = 1 << 24  # decompressed header bytes
_MAX_NUMEL = 1 << 28
_DTYPES = {
    "f16": torch.float16,
    "f32": torch.float32,
    "f64": torch.float64,
    "i64": torch.int64,
    "i32": torch.int32,
    "u8": torch.uint8,
    "bool": torch.bool,
}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}


@dataclass
class _Encoded:
    blob: bytes
    breakdown: dict[str, dict[str, int]]
    streams: list[_Stream] = field(default_factory=list)


# ---------------------------------------------------------------- public API


def encode(module: nn.Module, meta: dict | None = None) -> bytes:
    """The .nrc bytes of `module` (plain nn.Linear layers are stored losslessly, as bits 32).

    meta: optional JSON-able facts kept in the header (scene, config), see ``read_header``.
    """
    return _encode(module, meta).blob


def encode_with_breakdown(
    module: nn.Module, meta: dict | None = None
) -> tuple[bytes, dict[str, dict[str, int]]]:
    """``encode`` and ``size_breakdown`` from a single encoding pass."""
    enc = _encode(module, meta)
    return enc.blob, enc.breakdown


def save(module: nn.Module, path: str | os.PathLike, meta: dict | None = None) -> int:
    """Write `module` to `path` atomically; returns the bytes written (== the file's size)."""
    return atomic_write_bytes(path, encode(module, meta))


def decode(data: bytes) -> nn.Module:
    """Rebuild the module from .nrc bytes; ValueError names what is wrong with a bad file."""
    header, payload = _unwrap(bytes(data))
    try:
        return _build(header, payload)
    except ValueError:
        raise
    except (KeyError, TypeError, IndexError, AttributeError, RuntimeError, OverflowError) as e:
        raise ValueError(f"malformed nerfcomp file: {type(e).__name__}: {e}") from e


def load(path: str | os.PathLike) -> nn.Module:
    """Read and decode a .nrc file (never unpickles, never executes code from it)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(f"cannot read nerfcomp file {os.fspath(path)!r}: {e.strerror}") from e
    return decode(data)


def read_header(data: bytes) -> dict:
    """The decoded JSON header of .nrc bytes (architecture and per-layer layout), for inspection."""
    return _unwrap(bytes(data))[0]


def size_breakdown(module: nn.Module) -> dict[str, dict[str, int]]:
    """Bytes of the file by layer and by what is stored (``PARTS``); its values sum to the size.

    Every row has every part; the row ``"(file)"`` holds the header (with magic, lengths and
    CRC) and the non-Linear parameters of opt-in modules.
    """
    return _encode(module).breakdown


def layer_nbytes(module: CompressedLinear) -> int:
    """Bytes one compressed layer's tensors and bias take in the file (its few bytes of
    header record aside): what a per-layer setting costs."""
    chunks: list[tuple[str, str, bytes]] = []
    _encode_layer("", module, chunks, [])
    return sum(len(c) for _, _, c in chunks)


def entropy_bound(module: nn.Module) -> float:
    """Bytes an ideal coder of the stored symbols would need: Σ over symbol streams of
    n·H(empirical distribution)/8, plus every byte of the file that is not a symbol stream
    (header, codebooks, raw values, biases, CRC). Histograms count as overhead, not bound."""
    enc = _encode(module)
    coded = sum(len(s.data) for s in enc.streams)
    return len(enc.blob) - coded + sum(s.entropy_bits for s in enc.streams) / 8


# ---------------------------------------------------------------- encoding


def _encode(module: nn.Module, meta: dict | None = None) -> _Encoded:
    if any(isinstance(m, nn.Linear) for m in module.modules()):
        module = compress(module, CompressionConfig())  # bits 32: lossless
    layers = [(n, m) for n, m in module.named_modules() if isinstance(m, CompressedLinear)]
    chunks: list[tuple[str, str, bytes]] = []  # (row, part, bytes) in payload order
    streams: list[_Stream] = []
    records = [_encode_layer(name, m, chunks, streams) for name, m in layers]
    params = _encode_params(module, [n for n, _ in layers], chunks)
    header = {
        "arch": _spec_from_module(module),
        "training": module.training,
        "layers": records,
        "params": params,
    }
    if meta:
        header["meta"] = meta
    text = zlib.compress(json.dumps(header, separators=(",", ":")).encode(), 9)
    payload = b"".join(c for _, _, c in chunks)
    total = _PREAMBLE.size + len(text) + len(payload) + _CRC.size
    body = _PREAMBLE.pack(MAGIC, VERSION, total, len(text)) + text + payload
    blob = body + _CRC.pack(zlib.crc32(body))
    breakdown = {name: dict.fromkeys(PARTS, 0) for name, _ in layers}
    breakdown[FILE_ROW] = dict.fromkeys(PARTS, 0)
    breakdown[FILE_ROW]["header"] = total - len(payload)
    for row, part, c in chunks:
        breakdown[row][part] += len(c)
    assert len(blob) == total
    return _Encoded(blob, breakdown, streams)


def _encode_layer(name: str, m: CompressedLinear, chunks: list, streams: list[_Stream]) -> dict:
    tensors = []
    for tname, st in m.stored.items():
        part = "dense" if tname == "W" else "factors"
        rec, parts = _encode_tensor(st, part, streams)
        tensors.append({"name": tname, **rec})
        chunks.extend((name, p, c) for p, c in parts)
    bias_dt = None
    if m.bias is not None:
        bias_dt, raw = _float_bytes(m.bias)
        chunks.append((name, "biases", raw))
    return {
        "name": name,
        "in": m.in_features,
        "out": m.out_features,
        "bias": bias_dt,
        "tensors": tensors,
    }


def _encode_tensor(
    st: StoredTensor, part: str, streams: list[_Stream]
) -> tuple[dict, list[tuple[str, bytes]]]:
    """Header record and (part, bytes) chunks of one stored tensor, smallest layout chosen."""
    rec: dict = {"shape": list(st.shape), "bits": st.bits}
    mask = None if st.mask is None else st.mask.detach().cpu().reshape(-1).numpy()
    head: list[tuple[str, bytes]] = []
    if st.codebook is not None:
        assert st.indices is not None
        rec["cb"], cb = _float_bytes(st.codebook)
        rec["k"] = k = st.codebook.numel()
        head.append(("codebooks", cb))
        idx = st.indices.detach().cpu().reshape(-1).numpy().astype(np.int64)
        if mask is None:
            options = {"plain": [("indices", _encode_stream(idx, k))]}
        else:
            options = {
                "folded": [("indices", _encode_stream(np.where(mask, idx + 1, 0), k + 1))],
                "split": [
                    ("masks", _encode_stream(mask.astype(np.int64), 2)),
                    ("indices", _encode_stream(idx[mask], k)),
                ],
            }
    else:
        assert st.values is not None
        values = st.values.detach().cpu().reshape(-1)
        rec["dt"], raw = _float_bytes(values)
        options = {"plain": [(part, raw)]}
        if mask is not None and not bool(values[torch.from_numpy(~mask)].any()):
            kept = _float_bytes(values[torch.from_numpy(mask)], rec["dt"])[1]
            options["split"] = [("masks", _encode_stream(mask.astype(np.int64), 2)), (part, kept)]
    rec["layout"], chosen = min(options.items(), key=lambda kv: _size(kv[1]))
    coded = [c for _, c in chosen if isinstance(c, _Stream)]
    rec["streams"] = [[c.mode, len(c.data)] for c in coded]
    streams.extend(coded)
    return rec, head + [(p, c.data if isinstance(c, _Stream) else c) for p, c in chosen]


def _size(option: list[tuple[str, _Stream | bytes]]) -> int:
    return sum(len(c.data if isinstance(c, _Stream) else c) for _, c in option)


def _float_bytes(t: torch.Tensor, dt: str | None = None) -> tuple[str, bytes]:
    """("f16", bytes) when fp16 holds `t` exactly, else ("f32", bytes); `dt` forces one."""
    t = t.detach().cpu().float().reshape(-1)
    if dt is None:
        dt = "f16" if torch.equal(t.half().float(), t) else "f32"
    np_dt = "<f2" if dt == "f16" else "<f4"
    return dt, t.numpy().astype(np_dt).tobytes()


def _encode_params(module: nn.Module, linear_names: list[str], chunks: list) -> list[dict]:
    """Raw little-endian bytes of every parameter / buffer outside the compressed layers."""
    out = []
    for name, t in module.state_dict(keep_vars=True).items():
        owner = name.rsplit(".", 1)[0] if "." in name else ""
        if owner in linear_names:
            continue
        t = t.detach().cpu()
        if t.dtype not in _DTYPE_NAMES:
            raise TypeError(f"cannot store parameter {name!r} of dtype {t.dtype}")
        out.append({"name": name, "dtype": _DTYPE_NAMES[t.dtype], "shape": list(t.shape)})
        chunks.append((FILE_ROW, "params", t.contiguous().numpy().tobytes()))
    return out


# ---------------------------------------------------------------- decoding


def _unwrap(data: bytes) -> tuple[dict, bytes]:
    """Check magic, version, length and CRC; return (header, payload)."""
    if len(data) == 0:
        raise ValueError("not a nerfcomp file: it is empty")
    if data[:4] != MAGIC[: len(data)]:
        raise ValueError(f"not a nerfcomp file: bad magic {data[:4]!r} (expected {MAGIC!r})")
    if len(data) < _PREAMBLE.size + _CRC.size:
        raise ValueError(f"truncated nerfcomp file: {len(data)} bytes")
    _, version, total, n_header = _PREAMBLE.unpack_from(data)
    if version > VERSION:
        raise ValueError(f"nerfcomp file version {version} is newer than this reader ({VERSION})")
    if version < 1:
        raise ValueError(f"unknown nerfcomp file version {version}")
    if len(data) < total:
        raise ValueError(f"truncated nerfcomp file: {len(data)} of {total} bytes")
    if len(data) > total:
        raise ValueError(f"nerfcomp file has {len(data) - total} trailing bytes after its end")
    (crc,) = _CRC.unpack_from(data, total - _CRC.size)
    if zlib.crc32(data[: total - _CRC.size]) != crc:
        raise ValueError("corrupted nerfcomp file: CRC32 mismatch")
    start = _PREAMBLE.size
    if start + n_header > total - _CRC.size:
        raise ValueError("malformed nerfcomp file: header runs past the end")
    try:
        z = zlib.decompressobj()
        text = z.decompress(data[start : start + n_header], _MAX_HEADER)
        if z.unconsumed_tail:
            raise ValueError("header too large")
        header = json.loads(text)
    except (zlib.error, ValueError) as e:
        raise ValueError(f"malformed nerfcomp file: unreadable header ({e})") from e
    if not isinstance(header, dict):
        raise ValueError("malformed nerfcomp file: header is not an object")
    return header, data[start + n_header : total - _CRC.size]


class _Reader:
    """Cursor over the payload; every read is bounds-checked."""

    def __init__(self, buf: bytes) -> None:
        self.buf, self.pos = buf, 0

    def take(self, n: int) -> bytes:
        if not isinstance(n, int) or n < 0 or self.pos + n > len(self.buf):
            raise ValueError("malformed nerfcomp file: payload shorter than the header says")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def floats(self, dt: str, count: int) -> torch.Tensor:
        np_dt = {"f16": "<f2", "f32": "<f4"}[dt]
        raw = self.take(count * (2 if dt == "f16" else 4))
        return torch.from_numpy(np.frombuffer(raw, np_dt).astype(np.float32))


def _build(header: dict, payload: bytes) -> nn.Module:
    skeleton = _module_from_spec(header["arch"])
    reader = _Reader(payload)
    layers = {rec["name"]: _decode_layer(rec, reader) for rec in header["layers"]}
    params = {p["name"]: _decode_param(p, reader) for p in header["params"]}
    if reader.pos != len(payload):
        raise ValueError("malformed nerfcomp file: payload longer than the header says")
    expected = [n for n, m in skeleton.named_modules() if isinstance(m, nn.Linear)]
    if sorted(expected) != sorted(layers):
        raise ValueError(
            f"malformed nerfcomp file: layers {sorted(layers)} do not match the "
            f"architecture's Linear layers {sorted(expected)}"
        )
    state = skeleton.state_dict(keep_vars=True)
    with torch.no_grad():
        for name, value in params.items():
            if name not in state or state[name].shape != value.shape:
                raise ValueError(f"malformed nerfcomp file: parameter {name!r} does not fit")
            state[name].copy_(value)
    return replace_linears(skeleton, layers).train(bool(header.get("training", False)))


def _decode_layer(rec: dict, reader: _Reader) -> CompressedLinear:
    stored = {t["name"]: _decode_tensor(t, reader) for t in rec["tensors"]}
    bias = reader.floats(rec["bias"], int(rec["out"])) if rec["bias"] is not None else None
    return CompressedLinear(rec["in"], rec["out"], stored, bias)


def _decode_tensor(rec: dict, reader: _Reader) -> StoredTensor:
    """One stored tensor, read in the order ``_encode_tensor`` wrote it."""
    shape = tuple(int(d) for d in rec["shape"])
    numel = int(np.prod(shape, dtype=np.int64))
    if any(d < 1 for d in shape) or numel > _MAX_NUMEL:
        raise ValueError(f"malformed nerfcomp file: bad tensor shape {shape}")
    quantized, layout = "k" in rec, rec["layout"]
    if layout not in (("plain", "folded", "split") if quantized else ("plain", "split")):
        raise ValueError(f"malformed nerfcomp file: unknown layout {layout!r}")
    streams = iter([(int(mode), int(n)) for mode, n in rec["streams"]])

    def next_stream(alphabet: int, n: int) -> torch.Tensor:  # (n,) int64
        mode, nbytes = next(streams)
        return torch.from_numpy(_decode_stream(reader.take(nbytes), mode, alphabet, n))

    k = int(rec["k"]) if quantized else 0
    codebook = reader.floats(rec["cb"], k) if quantized else None
    mask = next_stream(2, numel).bool() if layout == "split" else None  # (numel,)
    if quantized and layout == "folded":
        sym = next_stream(k + 1, numel)
        mask, idx = sym > 0, (sym - 1).clamp_min(0)
    elif quantized:
        idx = next_stream(k, numel if mask is None else int(mask.sum()))
        if mask is not None:
            idx = torch.zeros(numel, dtype=torch.long).masked_scatter_(mask, idx)
    else:
        values = reader.floats(rec["dt"], numel if mask is None else int(mask.sum()))
        if mask is not None:
            values = torch.zeros(numel).masked_scatter_(mask, values)
    if next(streams, None) is not None:
        raise ValueError("malformed nerfcomp file: more streams than the layout uses")
    mask = None if mask is None else mask.reshape(shape)
    bits = int(rec["bits"])
    if quantized:
        return StoredTensor(shape, bits, codebook=codebook, indices=idx, mask=mask)
    return StoredTensor(shape, bits, mask=mask, values=values.reshape(shape))


def _decode_param(rec: dict, reader: _Reader) -> torch.Tensor:
    dtype = _DTYPES[rec["dtype"]]
    shape = tuple(int(d) for d in rec["shape"])
    numel = int(np.prod(shape, dtype=np.int64))
    if any(d < 0 for d in shape) or numel > _MAX_NUMEL:
        raise ValueError(f"malformed nerfcomp file: bad parameter shape {shape}")
    raw = bytearray(reader.take(numel * torch.empty(0, dtype=dtype).element_size()))
    if numel == 0:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(raw, dtype=dtype).reshape(shape)


# ---------------------------------------------------------------- symbol streams

RAW, RANGE = 0, 1


@dataclass
class _Stream:
    """One coded symbol stream: RAW (bit-packed) or RANGE (varint histogram + range code)."""

    mode: int
    data: bytes
    entropy_bits: float  # n·H(empirical distribution of its symbols)


def _width(alphabet: int) -> int:
    """Bits per bit-packed symbol: ⌈log2 alphabet⌉ (0 for a one-symbol alphabet)."""
    return max(alphabet - 1, 0).bit_length()


def _encode_stream(sym: np.ndarray, alphabet: int) -> _Stream:
    """sym: (n,) int64 in [0, alphabet) → the smaller of bit-packing and range coding."""
    counts = np.bincount(sym, minlength=alphabet)
    p = counts[counts > 0] / max(sym.size, 1)
    entropy = float(-(p * np.log2(p)).sum()) * sym.size
    raw = _pack_bits(sym, _width(alphabet))
    if alphabet < 2 or entropy / 8 >= len(raw):  # range coding cannot win
        return _Stream(RAW, raw, entropy)
    coded = _varints(counts) + _range_encode(sym, counts)
    return _Stream(RANGE, coded, entropy) if len(coded) < len(raw) else _Stream(RAW, raw, entropy)


def _decode_stream(buf: bytes, mode: int, alphabet: int, n: int) -> np.ndarray:
    """Inverse of ``_encode_stream``: (n,) int64 symbols."""
    if mode == RAW:
        sym = _unpack_bits(buf, n, _width(alphabet))
    elif mode == RANGE and alphabet >= 2:
        counts, pos = _read_varints(buf, alphabet)
        if int(counts.sum()) != n or (len(buf) - pos) % 4:
            raise ValueError("malformed nerfcomp file: bad range-coded stream")
        words = np.frombuffer(buf[pos:], "<u4").astype(np.uint32)
        decoder = constriction.stream.queue.RangeDecoder(words)
        sym = np.asarray(decoder.decode(_categorical(counts), n), dtype=np.int64)
    else:
        raise ValueError(f"malformed nerfcomp file: unknown stream mode {mode}")
    if sym.size and (sym.min() < 0 or sym.max() >= alphabet):
        raise ValueError("malformed nerfcomp file: symbol outside its alphabet")
    return sym


def _categorical(counts: np.ndarray) -> constriction.stream.model.Categorical:
    """The static model; built from the stored integer counts, so the decoder's is identical."""
    return constriction.stream.model.Categorical(counts.astype(np.float64), perfect=False)


def _range_encode(sym: np.ndarray, counts: np.ndarray) -> bytes:
    encoder = constriction.stream.queue.RangeEncoder()
    encoder.encode(sym.astype(np.int32), _categorical(counts))
    return encoder.get_compressed().astype("<u4").tobytes()


def _pack_bits(sym: np.ndarray, width: int) -> bytes:
    """(n,) symbols → ⌈n·width/8⌉ bytes, least significant bit first."""
    if width == 0 or sym.size == 0:
        return b""
    bits = (sym[:, None] >> np.arange(width)) & 1  # (n, width)
    return np.packbits(bits.astype(np.uint8).reshape(-1), bitorder="little").tobytes()


def _unpack_bits(buf: bytes, n: int, width: int) -> np.ndarray:
    if len(buf) != (n * width + 7) // 8:
        raise ValueError("malformed nerfcomp file: bit-packed stream has the wrong length")
    if width == 0:
        return np.zeros(n, dtype=np.int64)
    flat = np.unpackbits(np.frombuffer(buf, np.uint8), count=n * width, bitorder="little")
    return (flat.reshape(n, width).astype(np.int64) << np.arange(width)).sum(axis=1)


def _varints(values: np.ndarray) -> bytes:
    """LEB128: 7 bits a byte, high bit = more bytes follow."""
    out = bytearray()
    for v in values.tolist():
        while v >= 0x80:
            out.append(v & 0x7F | 0x80)
            v >>= 7
        out.append(v)
    return bytes(out)


def _read_varints(buf: bytes, count: int) -> tuple[np.ndarray, int]:
    """`count` LEB128 integers from the start of `buf`; returns (values, bytes read)."""
    values, pos = [], 0
    for _ in range(count):
        v = shift = 0
        while True:
            if pos >= len(buf) or shift > 56:
                raise ValueError("malformed nerfcomp file: bad histogram")
            byte = buf[pos]
            pos += 1
            v |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        values.append(v)
    return np.array(values, dtype=np.int64), pos


# ---------------------------------------------------------------- architectures

_ACTIVATIONS: dict[str, tuple[type[nn.Module], tuple[str, ...]]] = {
    "ReLU": (nn.ReLU, ()),
    "Tanh": (nn.Tanh, ()),
    "Sigmoid": (nn.Sigmoid, ()),
    "GELU": (nn.GELU, ("approximate",)),
    "SiLU": (nn.SiLU, ()),
    "Softplus": (nn.Softplus, ("beta", "threshold")),
    "Identity": (nn.Identity, ()),
    "LeakyReLU": (nn.LeakyReLU, ("negative_slope",)),
    "ELU": (nn.ELU, ("alpha",)),
}
_REGISTRY: dict[str, type[nn.Module]] = {}
_LAZY_ALLOWLIST = frozenset({"nerfcomp.model:NeRF"})  # imported only when a file names it
_MAX_DEPTH = 64
_MAX_FEATURES = 1 << 24


def register_architecture(cls: type[nn.Module]) -> type[nn.Module]:
    """Allow `load` to rebuild `cls` (usable as a decorator). `cls` needs ``arch_spec(self) ->
    dict`` (JSON-able) and a classmethod ``from_arch_spec(spec) -> cls``."""
    if not (
        callable(getattr(cls, "arch_spec", None)) and callable(getattr(cls, "from_arch_spec", None))
    ):
        raise TypeError(f"{cls!r} needs arch_spec() and a from_arch_spec() classmethod")
    _REGISTRY[_class_key(cls)] = cls
    return cls


def _class_key(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _resolve_class(key: str) -> type[nn.Module]:
    if key in _REGISTRY:
        return _REGISTRY[key]
    if key not in _LAZY_ALLOWLIST:
        raise ValueError(f"architecture {key!r} is not allowlisted; register_architecture() it")
    module_name, qualname = key.split(":")
    obj = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return register_architecture(obj)


def _spec_from_module(m: nn.Module) -> dict:
    """JSON description of `m`'s architecture (Linear layers as placeholders)."""
    if callable(getattr(m, "arch_spec", None)) and hasattr(type(m), "from_arch_spec"):
        key = _class_key(type(m))
        if key not in _REGISTRY and key not in _LAZY_ALLOWLIST:
            raise TypeError(f"{key} is not registered; call register_architecture({key})")
        return {"type": "class", "name": key, "spec": m.arch_spec()}
    if isinstance(m, nn.Linear | CompressedLinear):
        return {
            "type": "Linear",
            "in": m.in_features,
            "out": m.out_features,
            "bias": m.bias is not None,
        }
    if type(m) is nn.Sequential:
        children = [[name, _spec_from_module(c)] for name, c in m.named_children()]
        return {"type": "Sequential", "children": children}
    for name, (cls, args) in _ACTIVATIONS.items():
        if type(m) is cls:
            return {"type": name, **{a: getattr(m, a) for a in args}}
    raise TypeError(
        f"cannot describe a {type(m).__name__} without pickling: use nn.Sequential "
        f"of Linear and {sorted(_ACTIVATIONS)}, or give the class arch_spec() / "
        f"from_arch_spec() and register_architecture() it"
    )


def _module_from_spec(spec: dict, depth: int = 0) -> nn.Module:
    """Inverse of ``_spec_from_module``; Linear placeholders are built on the meta device."""
    if depth > _MAX_DEPTH or not isinstance(spec, dict):
        raise ValueError("malformed nerfcomp file: bad architecture description")
    kind = spec.get("type")
    if kind == "class":
        cls = _resolve_class(str(spec["name"]))
        try:
            m = cls.from_arch_spec(spec["spec"])
        except Exception as e:  # a bad spec is a bad file, whatever the class raises
            raise ValueError(f"cannot rebuild {spec['name']} from the file: {e}") from e
        if not isinstance(m, nn.Module):
            raise ValueError(f"{spec['name']}.from_arch_spec did not return a Module")
        return m
    if kind == "Linear":
        n_in, n_out = int(spec["in"]), int(spec["out"])
        if not (0 < n_in <= _MAX_FEATURES and 0 < n_out <= _MAX_FEATURES):
            raise ValueError(f"malformed nerfcomp file: Linear({n_in}, {n_out})")
        return nn.Linear(n_in, n_out, bias=bool(spec["bias"]), device="meta")
    if kind == "Sequential":
        children = [(str(n), _module_from_spec(c, depth + 1)) for n, c in spec["children"]]
        return nn.Sequential(OrderedDict(children))
    if kind in _ACTIVATIONS:
        cls, args = _ACTIVATIONS[kind]
        return cls(**{a: spec[a] for a in args if a in spec})
    raise ValueError(f"malformed nerfcomp file: unknown module type {kind!r}")

"""The .nrc file format: exact round trips, byte accounting, and rejection of bad files."""

import json
import os
import pickle
import struct
import zlib
from collections import OrderedDict

import pytest
import torch
from torch import nn

import nerfcomp.compress.codec as codec
from nerfcomp.compress import (
    CompressedLinear,
    CompressionConfig,
    compress,
    decode,
    encode,
    entropy_bound,
    load,
    read_header,
    register_architecture,
    save,
    size_breakdown,
)

CONFIGS = [
    CompressionConfig(bits=32),
    CompressionConfig(bits=16),
    CompressionConfig(bits=16, prune=0.5),
    CompressionConfig(bits=32, rank=4, prune=0.5),
    CompressionConfig(bits=8),
    CompressionConfig(bits=4, rank=4),
    CompressionConfig(bits=3, prune=0.5),
    CompressionConfig(bits=2, rank=4, prune=0.3),
    CompressionConfig(bits=1, prune=0.9),
]


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 3)
    )


def rewrap(header: dict, payload: bytes, version: int = codec.VERSION) -> bytes:
    """A file with a valid CRC around any header / payload (to test what the CRC cannot)."""
    text = zlib.compress(json.dumps(header).encode())
    total = 14 + len(text) + len(payload) + 4
    body = struct.pack("<4sHII", b"NRC\x00", version, total, len(text)) + text + payload
    return body + struct.pack("<I", zlib.crc32(body))


def payload_of(blob: bytes) -> bytes:
    n_header = struct.unpack_from("<I", blob, 10)[0]
    return blob[14 + n_header : -4]


@pytest.fixture(scope="module")
def blob() -> bytes:
    return encode(compress(mlp(), CompressionConfig(bits=3, rank=4, prune=0.5)))


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"b{c.bits}r{c.rank}p{c.prune}")
def test_round_trip_is_bit_identical_and_bytes_are_the_file_size(cfg, tmp_path):
    small = compress(mlp(), cfg)
    path = tmp_path / "m.nrc"
    n = save(small, path)
    assert n == os.path.getsize(path)
    again = load(path)
    x = torch.randn(50, 12, generator=torch.Generator().manual_seed(1))
    assert torch.equal(again(x), small(x))
    breakdown = size_breakdown(small)
    assert sum(sum(row.values()) for row in breakdown.values()) == n
    assert set(breakdown) == {"0", "2", "4", "(file)"}
    assert all(set(row) == set(codec.PARTS) for row in breakdown.values())
    assert n <= 1.05 * entropy_bound(small)
    assert os.listdir(tmp_path) == ["m.nrc"]  # atomic write leaves no temp file


def test_exact_byte_counts_of_raw_parts():
    torch.manual_seed(0)
    odd = nn.Sequential(nn.Linear(7, 13), nn.ReLU(), nn.Linear(13, 5))
    b32 = size_breakdown(compress(odd, CompressionConfig(bits=32)))
    assert b32["0"] == {**dict.fromkeys(codec.PARTS, 0), "dense": 13 * 7 * 4, "biases": 13 * 4}
    b16 = size_breakdown(compress(odd, CompressionConfig(bits=16)))
    assert (b16["2"]["dense"], b16["2"]["biases"]) == (5 * 13 * 2, 5 * 2)
    b2 = size_breakdown(compress(odd, CompressionConfig(bits=2)))
    assert b2["0"]["codebooks"] == 4 * 2  # 4 fp16 centroids
    assert 0 < b2["0"]["indices"] <= (91 * 2 + 7) // 8  # never worse than bit-packing


def test_nested_sequential_all_activations_named_children():
    torch.manual_seed(0)
    inner = nn.Sequential(nn.Linear(9, 8), nn.SiLU(), nn.Linear(8, 8, bias=False), nn.Sigmoid())
    model = nn.Sequential(
        OrderedDict(
            [
                ("inp", nn.Linear(5, 9)),
                ("a", nn.LeakyReLU(0.2)),
                ("inner", inner),
                ("b", nn.Softplus(beta=2.0)),
                ("c", nn.GELU(approximate="tanh")),
                ("d", nn.Identity()),
                ("e", nn.ELU(0.5)),
                ("f", nn.Tanh()),
                ("out", nn.Linear(8, 2)),
            ]
        )
    ).eval()
    small = compress(model, CompressionConfig(bits=5, prune=0.1))
    again = decode(encode(small))
    x = torch.randn(20, 5)
    assert torch.equal(again(x), small(x)) and not again.training
    assert [n for n, m in again.named_modules() if isinstance(m, CompressedLinear)] == [
        "inp",
        "inner.0",
        "inner.2",
        "out",
    ]
    assert again.b.beta == 2.0 and again.c.approximate == "tanh" and again.a.negative_slope == 0.2


def test_uncompressed_model_is_stored_losslessly():
    model = mlp()
    x = torch.randn(5, 12)
    assert torch.equal(decode(encode(model))(x), model(x))


class Scaled(nn.Module):
    """An opt-in architecture with a non-Linear parameter and buffer."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.width = width
        self.body = nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Linear(width, 2))
        self.scale = nn.Parameter(torch.tensor([1.5, -2.0]))
        self.register_buffer("offset", torch.arange(2, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) * self.scale + self.offset

    def arch_spec(self) -> dict:
        return {"width": self.width}

    @classmethod
    def from_arch_spec(cls, spec: dict) -> "Scaled":
        return cls(int(spec["width"]))


def test_opt_in_architecture_round_trip_and_allowlist(monkeypatch):
    model = Scaled(16)
    with torch.no_grad():
        model.scale.mul_(3.0)
        model.offset.add_(0.25)
    small = compress(model, CompressionConfig(bits=4))
    with pytest.raises(TypeError, match="register_architecture"):
        encode(small)
    register_architecture(Scaled)
    data = encode(small)
    again = decode(data)
    x = torch.randn(7, 4)
    assert isinstance(again, Scaled) and torch.equal(again(x), small(x))
    assert size_breakdown(small)["(file)"]["params"] == 2 * 4 + 2 * 4
    monkeypatch.setattr(codec, "_REGISTRY", {})
    with pytest.raises(ValueError, match="not allowlisted"):
        decode(data)


def test_nerf_is_allowlisted_lazily():
    from nerfcomp.model import NeRF, NeRFConfig

    torch.manual_seed(0)
    nerf = NeRF(NeRFConfig(width=16, depth=3, skip=1, pos_freqs=2, dir_freqs=1))
    small = compress(nerf, CompressionConfig(bits=4, rank=4, prune=0.2))
    again = decode(encode(small))
    x, d = torch.rand(30, 3) * 2 - 1, nn.functional.normalize(torch.randn(30, 3), dim=-1)
    assert isinstance(again, NeRF) and again.config == nerf.config
    assert all(torch.equal(a, b) for a, b in zip(again(x, d), small(x, d), strict=True))


def test_unsupported_module_raises_type_error():
    with pytest.raises(TypeError, match="Conv1d"):
        encode(nn.Sequential(nn.Linear(3, 3), nn.Conv1d(1, 1, 1)))


# ---------------------------------------------------------------- bad files


@pytest.mark.parametrize("cut", [0, 3, 10, 17, 100, -1])
def test_truncated_file_raises(blob, cut):
    with pytest.raises(ValueError, match="truncated|empty"):
        decode(blob[:cut])


@pytest.mark.parametrize("where", [6, 14, 40, 200, -30, -1])
def test_flipped_byte_raises(blob, where):
    bad = bytearray(blob)
    bad[where] ^= 0x10
    with pytest.raises(ValueError, match="CRC|truncated|trailing|newer"):
        decode(bytes(bad))


@pytest.mark.parametrize(
    "data, match",
    [
        (b"", "empty"),
        (b"PK\x03\x04" + bytes(40), "bad magic"),
        (pickle.dumps({"weight": [1.0, 2.0]}), "bad magic"),
        (bytes(range(256)) * 4, "bad magic"),
    ],
)
def test_foreign_files_raise(data, match):
    with pytest.raises(ValueError, match=match):
        decode(data)


def test_random_bytes_and_torch_pickle_raise(tmp_path):
    rand = torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError):
        decode(bytes(rand.to(torch.uint8).tolist()))
    torch.save(mlp().state_dict(), tmp_path / "m.pt")
    with pytest.raises(ValueError, match="not a nerfcomp file"):
        load(tmp_path / "m.pt")


def test_future_version_and_trailing_bytes_raise(blob):
    header = read_header(blob)
    with pytest.raises(ValueError, match="version 2 is newer"):
        decode(rewrap(header, payload_of(blob), version=2))
    with pytest.raises(ValueError, match="trailing"):
        decode(blob + b"\x00")


@pytest.mark.parametrize(
    "mutate",
    [
        lambda h: h.update(arch={"type": "Exec", "code": "1"}),
        lambda h: h.update(arch={"type": "class", "name": "os:system", "spec": {}}),
        lambda h: h["layers"][0]["tensors"][0].update(shape=[10**6, 10**6]),
        lambda h: h["layers"][0]["tensors"][0].update(layout="zigzag"),
        lambda h: h["layers"][0]["tensors"][0]["streams"][0].__setitem__(1, 10**9),
        lambda h: h["layers"].pop(),
        lambda h: h.pop("layers"),
    ],
)
def test_malformed_header_with_valid_crc_raises(blob, mutate):
    header = read_header(blob)
    mutate(header)
    with pytest.raises(ValueError, match="malformed|allowlisted"):
        decode(rewrap(header, payload_of(blob)))


# ---------------------------------------------------------------- symbol streams


def test_bit_packing_hand_built():
    # symbols 1, 2, 3, 0 at 2 bits, least significant bit first: 1,0 | 0,1 | 1,1 | 0,0 = 0x39
    s = codec._encode_stream(torch.tensor([1, 2, 3, 0]).numpy(), 4)
    assert (s.mode, s.data) == (codec.RAW, b"\x39")
    assert codec._decode_stream(b"\x39", codec.RAW, 4, 4).tolist() == [1, 2, 3, 0]


def test_skewed_stream_is_range_coded_near_its_entropy():
    g = torch.Generator().manual_seed(0)
    sym = (torch.rand(4000, generator=g) < 0.05).long().numpy()  # H ≈ 0.29 bit
    s = codec._encode_stream(sym, 2)
    assert s.mode == codec.RANGE and len(s.data) < s.entropy_bits / 8 + 16 < 4000 / 8
    assert (codec._decode_stream(s.data, codec.RANGE, 2, 4000) == sym).all()


def test_peaked_weights_take_the_range_coded_path():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64))
    with torch.no_grad():  # Laplace weights: a few centroids hold most of them
        u = torch.rand(64, 64) - 0.5
        model[0].weight.copy_(-0.05 * u.sign() * torch.log1p(-2 * u.abs()))
    small = compress(model, CompressionConfig(bits=4, layers={"0": {"prune": 0.0}}))
    data = encode(small)
    assert read_header(data)["layers"][0]["tensors"][0]["streams"][0][0] == codec.RANGE
    x = torch.randn(8, 64)
    assert torch.equal(decode(data)(x), small(x))
    assert len(data) <= 1.05 * entropy_bound(small)

"""Command line: python -m nerfcomp {scenes,train,eval,compress,decode,sweep,auto}.

With --json each command prints exactly one JSON object on stdout; logs go to stderr.
A bad argument or file gives a one-line error naming the problem and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

__all__ = ["main"]

log = logging.getLogger("nerfcomp")


class CliError(Exception):
    """An error the user can fix: printed as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + traceback
        raise CliError(f"{self.prog}: {message}")


def _add_compression_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scene", required=True, help="a shipped scene (see `scenes`)")
    p.add_argument("--bits", type=int, default=32, help="1..8 k-means, 16 fp16, 32 float32")
    p.add_argument("--rank", type=int, default=None, help="largest rank a weight keeps")
    p.add_argument("--prune", type=float, default=0.0, help="fraction of weights set to zero")
    p.add_argument("--admm-steps", type=int, default=0, help="ADMM refinement steps (0: instant)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    p.add_argument("--checkpoint", default=None, help="a NeRF checkpoint instead of the scene's")
    p.add_argument(
        "--layer",
        action="append",
        default=[],
        metavar="NAME=bits:B,rank:R,prune:P",
        help="per-layer override, repeatable (e.g. trunk.0=bits:8 sigma=bits:8,rank:0)",
    )


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="nerfcomp", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    s = sub.add_parser("scenes", help="list the shipped scenes")
    s.add_argument("--json", action="store_true")

    t = sub.add_parser("train", help="train a NeRF on a scene and write its checkpoint")
    t.add_argument("--scene", required=True)
    t.add_argument("--steps", type=int, default=None)
    t.add_argument("--out", default=None, help="checkpoint path (default assets/SCENE.safetensors)")
    t.add_argument("--resume", default=None, help="training-state file, saved and resumed from")
    t.add_argument("--device", default="auto")
    t.add_argument("--json", action="store_true")

    e = sub.add_parser("eval", help="PSNR/SSIM/bytes of a compression setting on the test views")
    _add_compression_args(e)
    e.add_argument("--json", action="store_true")

    c = sub.add_parser("compress", help="compress a scene's NeRF into a .nrc file")
    _add_compression_args(c)
    c.add_argument("--out", required=True)
    c.add_argument("--json", action="store_true")

    d = sub.add_parser("decode", help="evaluate a .nrc file on its scene's test views")
    d.add_argument("file")
    d.add_argument("--device", default="auto")
    d.add_argument("--json", action="store_true")

    w = sub.add_parser("sweep", help="rate–distortion table of a scene (resumable)")
    w.add_argument("--scene", required=True)
    w.add_argument("--out", default=None, help="default assets/SCENE.sweep.json")
    w.add_argument("--admm-points", type=int, default=0, help="ADMM-refined frontier points")
    w.add_argument("--admm-steps", type=int, default=300)
    w.add_argument("--device", default="auto")
    w.add_argument("--json", action="store_true")

    a = sub.add_parser("auto", help="per-layer settings for a target, found and verified")
    a.add_argument("--scene", required=True, help="a shipped scene (see `scenes`)")
    goal = a.add_mutually_exclusive_group(required=True)
    goal.add_argument(
        "--target-psnr-drop",
        type=_percent,
        metavar="P",
        help="keep PSNR >= (100 - P)%% of the original's (e.g. 1 or 1%%)",
    )
    goal.add_argument("--target-bytes", type=int, metavar="N", help="a file of at most N bytes")
    a.add_argument("--admm-steps", type=int, default=0, help="ADMM refinement of the allocation")
    a.add_argument(
        "--admm-rounds",
        type=int,
        default=3,
        help="with --admm-steps: refined allocations tried at most (default 3); for a byte "
        "target, another only when a refined file came out over the budget",
    )
    a.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    a.add_argument("--checkpoint", default=None, help="a NeRF checkpoint instead of the scene's")
    a.add_argument("--out", default=None, help="write the chosen file here")
    a.add_argument("--json", action="store_true")
    return p


def _percent(text: str) -> float:
    """``1`` or ``1%`` → 1.0."""
    try:
        return float(text.strip().removesuffix("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a percent such as 1 or 1%, got {text!r}"
        ) from None


def parse_layer(spec: str) -> tuple[str, dict]:
    """``NAME=bits:4,rank:32,prune:0.1`` → (NAME, {"bits": 4, "rank": 32, "prune": 0.1})."""
    name, sep, body = spec.partition("=")
    fields: dict = {}
    for item in body.split(",") if body else []:
        key, colon, value = item.partition(":")
        if key not in ("bits", "rank", "prune") or not colon:
            raise CliError(f"--layer {spec!r}: expected NAME=bits:B,rank:R,prune:P")
        try:
            fields[key] = float(value) if key == "prune" else int(value)
        except ValueError:
            raise CliError(f"--layer {spec!r}: {key} must be a number, got {value!r}") from None
    if not name or not sep or not fields:
        raise CliError(f"--layer {spec!r}: expected NAME=bits:B,rank:R,prune:P")
    return name, fields


def _config(args):
    from nerfcomp.compress import CompressionConfig, LayerConfig

    layers = {}
    for spec in args.layer:
        name, fields = parse_layer(spec)
        layers[name] = LayerConfig(**fields)
    return CompressionConfig(
        bits=args.bits,
        rank=args.rank,
        prune=args.prune,
        admm_steps=args.admm_steps,
        layers=layers,
    )


def cmd_scenes(args) -> dict:
    from nerfcomp import scenes

    out = []
    for s in scenes.SCENES.values():
        row = {"name": s.name, "difficulty": s.difficulty, "description": s.description}
        row["checkpoint"] = str(s.checkpoint) if s.checkpoint.exists() else None
        metrics_path = s.checkpoint.with_suffix(".json")
        if metrics_path.exists():
            m = json.loads(metrics_path.read_text())
            row.update({k: m.get(k) for k in ("psnr", "ssim", "steps", "train_seconds")})
        out.append(row)
    return {"scenes": out}


def cmd_train(args) -> dict:
    from nerfcomp import scenes
    from nerfcomp.compress.engine import resolve_device
    from nerfcomp.train import TrainConfig, train

    kw = {"steps": args.steps} if args.steps else {}
    cfg = TrainConfig(args.scene, **kw)
    out = args.out or scenes.get_scene(args.scene).checkpoint

    logged = [0]

    def progress(step: int, total: int, m: dict) -> None:  # called every grid_every steps
        if step - logged[0] >= 250 or step == total:
            logged[0] = step
            log.info("step %d/%d  loss %.5f  train PSNR %.2f", step, total, m["loss"], m["psnr"])

    metrics = train(cfg, out, resolve_device(args.device), args.resume, progress)
    return {**metrics, "checkpoint": str(out), "bytes": os.path.getsize(out)}


def _base_name(engine, args) -> str:
    """The engine's name for the model to compress: the scene's, or --checkpoint's."""
    if args.checkpoint is None:
        return args.scene
    return engine.add_upload(args.checkpoint, args.scene)


def cmd_eval(args) -> dict:
    from nerfcomp.compress.engine import Engine

    engine = Engine(args.device)
    return engine.readout(_base_name(engine, args), _config(args))


def cmd_compress(args) -> dict:
    from nerfcomp.compress.engine import Engine
    from nerfcomp.fileio import atomic_write_bytes

    engine = Engine(args.device)
    cfg, name = _config(args), _base_name(engine, args)
    out = engine.readout(name, cfg)
    atomic_write_bytes(args.out, engine.compress(name, cfg).payload)
    out["bytes"] = os.path.getsize(args.out)
    return {**out, "file": args.out}


def cmd_decode(args) -> dict:
    from nerfcomp.compress import load, read_header
    from nerfcomp.compress.engine import resolve_device
    from nerfcomp.evaluate import evaluate_model

    if not os.path.isfile(args.file):
        raise CliError(f"no such file: {args.file}")
    with open(args.file, "rb") as f:
        meta = read_header(f.read()).get("meta", {})
    if "scene" not in meta:
        raise CliError(f"{args.file}: the file does not say which scene it holds")
    device = resolve_device(args.device)
    model = load(args.file).to(device).eval()
    score = evaluate_model(model, meta["scene"])
    cfg = meta.get("config", {})
    return {
        "file": args.file,
        "scene": meta["scene"],
        **{k: cfg.get(k) for k in ("bits", "rank", "prune", "admm_steps")},
        **({"layers": cfg["layers"]} if cfg.get("layers") else {}),
        **{k: score[k] for k in ("psnr", "ssim", "render_ms", "test_views")},
        "bytes": os.path.getsize(args.file),
        "device": str(device),
    }


def cmd_sweep(args) -> dict:
    from nerfcomp.compress.sweep import run_sweep

    return run_sweep(args.scene, args.out, args.admm_points, args.admm_steps, args.device)


def cmd_auto(args) -> dict:
    from nerfcomp.compress.engine import Engine
    from nerfcomp.fileio import atomic_write_bytes

    engine = Engine(args.device)
    name = _base_name(engine, args)

    def progress(fraction: float, message: str) -> None:
        log.info("%3.0f%%  %s", 100 * fraction, message)

    found = engine.auto(
        name,
        target_psnr_drop=args.target_psnr_drop,
        target_bytes=args.target_bytes,
        admm_steps=args.admm_steps,
        admm_rounds=args.admm_rounds,
        progress=progress,
    )
    out = {**engine.readout(name, found.config), **found.to_dict()}
    if args.out:
        atomic_write_bytes(args.out, engine.compress(name, found.config).payload)
        out.update(file=args.out, bytes=os.path.getsize(args.out))
    return out


COMMANDS = {
    "scenes": cmd_scenes,
    "train": cmd_train,
    "eval": cmd_eval,
    "compress": cmd_compress,
    "decode": cmd_decode,
    "sweep": cmd_sweep,
    "auto": cmd_auto,
}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        args = build_parser().parse_args(argv)
        if args.verbose:
            logging.getLogger().setLevel(logging.DEBUG)
        t0 = time.perf_counter()
        result = COMMANDS[args.command](args)
        result.setdefault("seconds", round(time.perf_counter() - t0, 2))
    except (CliError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    if getattr(args, "json", False):
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

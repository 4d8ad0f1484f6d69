"""A job at a shape warmup did not compile: which strategy serves it best, measured.

    python -m warmup.bench_shapes --mode tiny --model visgate/tiny-flux --size 256 --new 256x384
    python -m warmup.bench_shapes --mode synthetic --model flux-dev --device cuda --size 1024 \
        --new 768x1344 --steps 28

Each strategy boots the tuned pipeline (the worker's optimize stage, regional compile) in a fresh
process with an empty inductor cache, warms it up at ``--size`` as the worker does, then serves
``--new``: its first request (what that user waits) and its steady latency (the runs after), and
again the warmed shape, whose speed a strategy must not give away. Strategies:

  eager-fallback  what the worker ships: stance ``eager_on_recompile``, the new shape runs eagerly
  recompile       a static recompile at the new shape inside its first request, compiled after
  dynamic         dynamic-shape graphs from warmup on (``assume_static_by_default=False``): no
                  recompile at a new shape, but symbolic-shape kernels for every shape

Timings are printed and written to warmup/results/, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from warmup.bench_latency import build, summary, timed  # noqa: E402
from warmup.check_args import comma_choices  # noqa: E402
from warmup.machine import machine_info, result_path  # noqa: E402
from warmup.report import shapes_tables  # noqa: E402
from warmup.synthetic import record_mode  # noqa: E402

STRATEGIES = ("eager-fallback", "recompile", "dynamic")


def parse_shape(text: str) -> tuple[int, int]:
    height, _, width = text.lower().partition("x")
    return int(height), int(width)


def graphs_compiled() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One strategy in this (fresh) process."""
    import torch

    from pipelines.base import GenerationRequest
    from runtime.optimize import configure_dynamo, optimize, serve_stance, warm_with_fallback
    from runtime.warmup import warmup

    with tempfile.TemporaryDirectory() as tmp:
        loaded, settings = build(args, Path(tmp))
        family = loaded.family
        warm_shape = (args.size, args.size)
        report = optimize(loaded, settings)
        if "compile" not in report.applied:
            raise SystemExit(f"compile did not apply: {report.skipped.get('compile')}")
        if args.child == "dynamic":
            import torch.fx.experimental._config as fx_config

            torch._dynamo.config.assume_static_by_default = False
            # A square warmup shape would otherwise give height and width one symbol
            # ("duck sizing"), and the first non-square job would recompile anyway.
            fx_config.use_duck_shape = False
        t0 = graphs_compiled()
        warmup_s, _ = timed(lambda: warm_with_fallback(
            lambda: warmup(family, loaded.pipe, [warm_shape]), report), loaded.device)
        if args.child == "eager-fallback":
            serve_stance(report)
        else:  # room for the extra graphs these strategies make on purpose
            configure_dynamo(8)
        graphs_after_warmup = graphs_compiled()

        def request(shape: tuple[int, int]) -> GenerationRequest:
            return GenerationRequest(prompt="a red fox in the snow", steps=args.steps or family.defaults.steps,
                                     guidance=family.defaults.guidance, height=shape[0],
                                     width=shape[1], seed=0)

        def serve(shape: tuple[int, int], runs: int) -> list[float]:
            return [timed(lambda: family.generate(loaded.pipe, request(shape)), loaded.device)[0]
                    for _ in range(runs)]

        warm_before = summary(serve(warm_shape, args.runs))
        new_shape = parse_shape(args.new)
        first_new = serve(new_shape, 1)[0]
        graphs_after_new = graphs_compiled()
        new_steady = summary(serve(new_shape, args.runs))
        warm_after = summary(serve(warm_shape, args.runs))
    return {"strategy": args.child, "warmup_s": round(warmup_s, 3),
            "graphs_at_warmup": graphs_after_warmup - t0,
            "graphs_at_new_shape": graphs_compiled() - graphs_after_warmup,
            "recompiled_in_first_new_request": graphs_after_new > graphs_after_warmup,
            "warm_shape": warm_before, "new_first_request_s": round(first_new, 3),
            "new_shape": new_steady, "warm_shape_after_new": warm_after}


def run_strategy(strategy: str, argv: list[str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:  # an empty inductor cache: a new container
        env = {"TMPDIR": tmp, "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        env.update({k: os.environ[k] for k in ("PYTHONPATH", "CUDA_VISIBLE_DEVICES", "HOME") if k in os.environ})
        proc = subprocess.run([sys.executable, "-m", "warmup.bench_shapes", *argv, "--child", strategy],
                              cwd=ROOT, env=env, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("CHILD_RESULT "):
            return json.loads(line.split(" ", 1)[1])
    raise RuntimeError(f"strategy {strategy} failed ({proc.returncode}): {proc.stderr[-3000:]}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("tiny", "synthetic", "real"), default="tiny")
    parser.add_argument("--model", default="visgate/tiny-flux")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=256, help="the warmed (square) shape")
    parser.add_argument("--new", default="256x384", help="the shape warmup did not see, HxW")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--cache-dir", type=Path, default=ROOT / ".cache" / "bench")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", choices=STRATEGIES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    comma_choices(parser, "--strategies", args.strategies, STRATEGIES)
    try:
        parse_shape(args.new)
    except ValueError:
        parser.error(f"--new {args.new!r} is not HxW, e.g. 832x1216")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # What bench_latency.build reads beside these: the worker's tuned defaults.
    args.precision, args.compile, args.quantize, args.attention = "auto", "regional", "none", "auto"
    if args.child:
        print("CHILD_RESULT " + json.dumps(child(args)))
        return 0
    own = list(argv if argv is not None else sys.argv[1:])
    results = [run_strategy(s, own) for s in args.strategies.split(",")]
    record = {"what": "unwarmed_shapes", "mode": record_mode(args.mode), "model": args.model,
              "size": args.size,
              "new": args.new, "steps": args.steps, "runs": args.runs,
              "machine": machine_info(args.device), "results": results}
    out = args.out or result_path(
        f"shapes-{record_mode(args.mode)}-{args.model.replace('/', '_')}-{args.size}", args.device)
    out.write_text(json.dumps(record, indent=1))
    print("\n".join(shapes_tables([(out.name, record)])))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

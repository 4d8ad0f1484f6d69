"""PNG encoders on a photo-like 1024x1024 image: the choice behind runtime/encode.py.

    python -m warmup.bench_encode [--size 1024] [--repeat 5]

Medians of --repeat runs; every candidate that is installed is measured in the same run, and each
output is decoded again to check it is lossless.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from warmup.machine import machine_info, result_path  # noqa: E402


def photo_like(size: int) -> Any:
    """Smooth gradients plus sensor-like noise: compresses like a photo, not like flat colour."""
    import numpy as np

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size]
    image = np.stack([(x / 4) % 256, (y / 4) % 256, ((x + y) / 8) % 256], -1)
    return np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)


def candidates() -> dict[str, Callable[[Any], bytes]]:
    from PIL import Image

    def pillow(level: int) -> Callable[[Any], bytes]:
        def encode(array: Any) -> bytes:
            buffer = io.BytesIO()
            Image.fromarray(array).save(buffer, format="PNG", compress_level=level)
            return buffer.getvalue()
        return encode

    found = {"pillow level 1": pillow(1), "pillow level 6": pillow(6)}
    try:
        import fpng  # type: ignore[import-not-found]

        found["fpng"] = fpng.from_ndarray
    except ImportError:
        pass
    try:
        import cv2  # type: ignore[import-not-found]

        found["opencv"] = lambda a: cv2.imencode(".png", a[:, :, ::-1])[1].tobytes()
    except ImportError:
        pass
    try:
        import imagecodecs  # type: ignore[import-not-found]

        found["imagecodecs level 1"] = lambda a: imagecodecs.png_encode(a, level=1)
    except ImportError:
        pass
    from runtime.encode import PngEncoder

    worker = PngEncoder()
    found[f"worker ({worker.name})"] = worker.encode
    return found


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=5)
    return parser.parse_args(argv)


def main() -> int:
    import numpy as np
    from PIL import Image

    args = parse_args()
    image = photo_like(args.size)
    rows = {}
    for name, encode in candidates().items():
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            png = encode(image)
            times.append(time.perf_counter() - t0)
        lossless = bool(np.array_equal(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")), image))
        rows[name] = {"median_ms": round(statistics.median(times) * 1000, 2), "bytes": len(png),
                      "lossless": lossless}
    out = result_path(f"png-encode-{args.size}", "cpu")
    out.write_text(json.dumps({"what": "png_encode", "size": args.size, "repeat": args.repeat,
                               "machine": machine_info("cpu"), "results": rows}, indent=1))
    print("| encoder | median ms | MB | lossless |\n|---|---|---|---|")
    for name, row in sorted(rows.items(), key=lambda kv: kv[1]["median_ms"]):
        print(f"| {name} | {row['median_ms']} | {row['bytes'] / 1e6:.2f} | {row['lossless']} |")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Which compile-cache mechanism to keep on the volume: measured, each boot a fresh process.

    python -m warmup.bench_compile_cache [--model visgate/tiny-flux] [--device cpu]

Boots the worker's real boot path (fetch → load → optimize → warmup) with VISGATE_COMPILE=regional
in fresh processes, each with an empty local inductor directory (a new container), against:
  cold          no archive on the volume
  both          the archive as the worker writes it (mega-cache blob + inductor directory)
  mega-only     the same archive without the inductor directory
  inductor-only the same archive with an empty mega-cache blob
and reports the warmup seconds (the first compiled calls) of each, and their ratio to cold.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from warmup.machine import machine_info, result_path  # noqa: E402

BOOT = """
import json, sys
from runtime.boot import boot
from runtime.boot_report import BootRecord
from runtime.settings import Settings
settings = Settings.from_env({"HF_MODEL_ID": sys.argv[1], "DEVICE": sys.argv[2],
                              "VISGATE_CACHE_DIR": sys.argv[3], "VISGATE_COMPILE": "regional"})
record = BootRecord()
boot(settings, record)
print("RECORD " + json.dumps(record.stages, default=str))
"""


def boot_once(model: str, device: str, cache_dir: Path, tmp: Path) -> dict[str, Any]:
    tmp.mkdir(parents=True, exist_ok=True)
    env = {"TMPDIR": str(tmp), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", BOOT, model, device, str(cache_dir)], cwd=ROOT,
                          env=env, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RECORD "):
            stages = json.loads(line.split(" ", 1)[1])
            warm = stages["warmup"]
            return {"warmup_s": warm["seconds"], "restored": warm.get("compile_cache", {}).get("restored"),
                    "counters": warm.get("compile_cache", {}).get("counters")}
    raise RuntimeError(f"boot failed ({proc.returncode}): {proc.stderr[-2000:]}")


def rewrite(archive: Path, keep_inductor: bool, keep_mega: bool) -> None:
    """Rewrite the archive in place without one of its two parts."""
    from runtime.compile_cache import INDUCTOR_DIR_NAME, MEGA_CACHE_NAME

    source = tarfile.open(archive)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as out:
        for member in source.getmembers():
            data = source.extractfile(member) if member.isfile() else None
            if member.name.startswith(INDUCTOR_DIR_NAME) and not keep_inductor:
                continue
            if member.name == MEGA_CACHE_NAME and not keep_mega:
                member = tarfile.TarInfo(MEGA_CACHE_NAME)
                data = io.BytesIO(b"")
            out.addfile(member, data)
    source.close()
    archive.write_bytes(buffer.getvalue())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="visgate/tiny-flux")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None)
    return parser.parse_args(argv)


def main() -> int:
    args = parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        volume = tmp / "volume"
        results["cold"] = boot_once(args.model, args.device, volume, tmp / "t-cold")
        archive = next((volume / "compile").glob("*.tar"))
        pristine = archive.read_bytes()
        for name, keep_inductor, keep_mega in (("both", True, True), ("mega-only", False, True),
                                               ("inductor-only", True, False)):
            archive.write_bytes(pristine)
            if not (keep_inductor and keep_mega):
                rewrite(archive, keep_inductor, keep_mega)
            results[name] = boot_once(args.model, args.device, volume, tmp / f"t-{name}")
            archive.write_bytes(pristine)
    cold = results["cold"]["warmup_s"]
    for entry in results.values():
        entry["ratio_to_cold"] = round(entry["warmup_s"] / cold, 3)
    record = {"what": "compile_cache_mechanisms", "model": args.model, "device": args.device,
              "machine": machine_info(args.device), "results": results}
    out = args.out or result_path("compile-cache-mechanisms", args.device)
    out.write_text(json.dumps(record, indent=1))
    print("| archive holds | warmup s (first compiled calls) | ratio to cold |\n|---|---|---|")
    for name, entry in results.items():
        print(f"| {name} | {entry['warmup_s']} | {entry['ratio_to_cold']} |")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

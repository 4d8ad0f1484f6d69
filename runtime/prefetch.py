"""Prefetch only: ``python -m runtime.prefetch``. Puts a model's files in a cache, then stops.

The Dockerfile's ``BAKE_MODEL`` build argument uses it to bake weights into the image. It runs the
fetch stage itself (``runtime.fetch.fetch``: the same file selection and checks as a worker boot),
then points a stable path (``--link``) at the fetched directory, so that the image's
``HF_MODEL_ID`` can name it as a local model directory: a baked worker boots with no hub traffic.

The token comes from ``--token-file`` (a BuildKit secret, ``/run/secrets/hf_token``) or
``HF_TOKEN``; it is handed to the settings, redacted from every log line, and never printed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Mapping, Sequence

from runtime.errors import WorkerError, brief, redact
from runtime.fetch import fetch
from runtime.logs import setup_logging
from runtime.settings import Settings

log = logging.getLogger("runtime.prefetch")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, prog="python -m runtime.prefetch", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="hub id or built-in tiny model (HF_MODEL_ID)")
    parser.add_argument("--revision", default="main", help="branch, tag or commit (HF_MODEL_REVISION)")
    parser.add_argument("--cache-dir", required=True, type=Path, help="cache root (VISGATE_CACHE_DIR)")
    parser.add_argument("--link", type=Path, help="make this path a symlink to the fetched model directory")
    parser.add_argument("--token-file", type=Path, help="file holding the HF token (used when it exists)")
    return parser.parse_args(argv)


def prefetch_env(args: argparse.Namespace, base: Mapping[str, str]) -> dict[str, str]:
    """The environment the settings are read from: ``base`` with the model and cache from ``args``."""
    env = dict(base)
    env.update(HF_MODEL_ID=args.model, HF_MODEL_REVISION=args.revision,
               VISGATE_CACHE_DIR=str(args.cache_dir))
    if args.token_file is not None and args.token_file.is_file():
        token = args.token_file.read_text().strip()
        if token:
            env["HF_TOKEN"] = token
    return env


def link_to(link: Path, target: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.is_file():
        link.unlink()
    elif link.exists():
        raise WorkerError(f"--link {link} exists and is not a symlink")
    link.symlink_to(target.resolve(), target_is_directory=True)


def check_boots_as_baked(settings: Settings, link: Path, variant: str | None) -> None:
    """Fetch the linked directory as the baked image's worker will, and compare what load gets.

    A repository fetched as weight-variant files (e.g. SDXL's ``fp16``) loads only with that
    variant: if the fetch stage cannot tell it for a local directory, the image would fail at every
    boot, so the build fails now instead.
    """
    baked = fetch(replace(settings, model_id=str(link)))
    seen = getattr(baked, "variant", None)
    if seen != variant:
        raise WorkerError(f"the fetched files are weight variant {variant!r}, but a worker booting from "
                          f"{link} would load variant {seen!r}: this model cannot be baked until the "
                          "fetch stage detects the variant of a local directory")


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    env = prefetch_env(args, os.environ if environ is None else environ)
    try:
        settings = Settings.from_env(env)
    except WorkerError as exc:
        log.error("prefetch: %s", exc)
        return 2
    setup_logging(settings.secrets)
    try:
        result = fetch(settings)
        if args.link is not None:
            link_to(args.link, result.model_dir)
            check_boots_as_baked(settings, args.link, getattr(result, "variant", None))
    except Exception as exc:  # noqa: BLE001 - a build step: one safe line, then a failed build
        message = redact(brief(exc, limit=10_000), settings.secrets)
        log.error("prefetch of %s failed: %s", settings.model_id, message)
        return 1
    summary = {"model_id": settings.model_id, "revision": settings.revision, "source": result.source,
               "model_dir": str(result.model_dir), "link": str(args.link) if args.link else None}
    log.info("prefetched: %s", json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A boot cut down to its fetch (and load) stages, as its own process.

    python -m tests.support.fetch_and_load [--load]

Settings come from the environment as in the worker; the outcome is one JSON line on stdout
(``model_dir``, ``variant``, ``report``, and ``pipeline`` with ``--load``; ``error`` and ``stage``
on a boot error). Logs go to stderr through the worker's own logging set-up (secrets redacted).
Several of these on one cache are how the tests show that workers share downloads.
"""

from __future__ import annotations

import json
import os
import sys

from runtime.errors import BootError
from runtime.fetch import FetchOptions, fetch
from runtime.logs import setup_logging
from runtime.settings import Settings


def main(argv: list[str]) -> int:
    settings = Settings.from_env(os.environ)
    setup_logging(settings.secrets)
    options = FetchOptions(progress_interval_s=float(os.environ.get("TEST_PROGRESS_INTERVAL", "10")))
    try:
        result = fetch(settings, options)
    except BootError as exc:
        print(json.dumps({"error": str(exc), "stage": exc.stage}), flush=True)
        return 1
    out = {"model_dir": str(result.model_dir), "variant": result.variant, "report": result.report}
    if "--load" in argv:
        from runtime.load import load

        out["pipeline"] = type(load(settings, result.model_dir, variant=result.variant).pipe).__name__
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

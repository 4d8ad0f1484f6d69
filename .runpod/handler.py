"""Runpod Hub convention: a repository carries a handler.py. This one only delegates.

The worker's entry point is ``python -m runtime`` (the image's CMD): it boots every stage, then
serves jobs with ``runtime.handler``. Running this file does the same from a checkout.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.__main__ import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

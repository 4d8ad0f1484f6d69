"""The load stage alone, in its own process, to see where importing the pipeline class is counted.

    python -m tests.support.load_split MODEL_DIR

diffusers imports a pipeline's module (and the transformers models it names) on its first use,
once per process: only a fresh process shows where that time lands. Prints one JSON line: load()'s
``imports_seconds`` and ``weights_seconds``, and ``class_import``, the first pipeline_class() call
(the one that imports): its seconds, and whether the family's load (the weights) had begun.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pipelines.registry import detect_family
from runtime.load import load
from runtime.settings import Settings


def main(argv: list[str]) -> int:
    model_dir = Path(argv[0])
    family = detect_family(model_dir)
    calls: list[dict[str, Any]] = []
    loading: list[bool] = []

    class Watched(type(family)):  # type: ignore[misc, valid-type]
        def pipeline_class(self) -> type:
            t0 = time.perf_counter()
            cls = super().pipeline_class()
            calls.append({"seconds": round(time.perf_counter() - t0, 3), "during_weights": bool(loading)})
            return cls

        def load(self, *args: Any, **kwargs: Any) -> Any:
            loading.append(True)
            return super().load(*args, **kwargs)

    settings = Settings.from_env({"HF_MODEL_ID": model_dir.name, "DEVICE": "cpu",
                                  "VISGATE_CACHE_DIR": tempfile.mkdtemp()})
    loaded = load(settings, model_dir, family=Watched(model_dir, family.model_index))
    print(json.dumps({"imports_seconds": loaded.imports_seconds, "weights_seconds": loaded.weights_seconds,
                      "class_import": calls[0]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

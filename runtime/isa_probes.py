"""Inductor's CPU vector-ISA probes, remembered on the volume (VISGATE_COMPILE=aot).

Why: loading any AOTInductor package, GPU ones included, first asks inductor which vector
instruction set this CPU supports (``torch._inductor.cpu_vec_isa.pick_vec_isa``), and inductor
answers by building a probe library per candidate (kept in its cache directory) and loading each
in a child Python process, in every new process. Before torch 2.13 each child imports torch
first: on a CPU with AMX, ten children, 16.4 s on the development CPU (2 s per ``import torch``
there); on the H200 host, where ``import torch`` takes 3.2-3.7 s, the same ten account for the
32.9-34.4 s its warm boots spent loading the SDXL UNet's package. A probe's answer depends on the
CPU (in the compile key that names this file), torch and the C++ compiler (in each probe's key
within it): a boot that finds its answers there asks no probe at all.

Only successes are remembered: a failed probe (a compiler without an instruction set's
intrinsics, a child that timed out) is asked again at the next boot.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Callable

from runtime.compile_cache import atomic_file, mark_used

log = logging.getLogger(__name__)


class ProbeMemo:
    """Wraps ``VecISA.check_build``: a probe already known to pass is not built or loaded again."""

    def __init__(self, path: Path, check_build: Callable[..., bool]) -> None:
        self.check_build = check_build  # inductor's own
        self.asked = 0  # probes run by inductor in this process (for the tests)
        self.use(path)

    def use(self, path: Path) -> None:
        """Remember into ``path`` from now on, starting from what it holds."""
        self.path = path
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):  # none yet, or torn by hand: probe again, then rewrite
            data = []
        self.known = {key for key in data if isinstance(key, str)} if isinstance(data, list) else set()
        if self.known:
            mark_used(path)  # in use: not pruned with stale packages

    def __call__(self, isa: Any, code: str, *args: Any, **kwargs: Any) -> bool:
        key = _key(isa, code, args, kwargs)
        if key in self.known:
            return True
        self.asked += 1
        passed = self.check_build(isa, code, *args, **kwargs)
        if passed:
            self.known.add(key)
            self._write()
        return passed

    def _write(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_file(self.path) as out:
                out.write(json.dumps(sorted(self.known)).encode())
        except OSError as exc:  # a read-only or full volume: the next boot probes again
            log.debug("ISA probes not remembered (%s)", exc)


def _key(isa: Any, code: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    import torch

    # The flags at the time of the call: inductor adds some for its bf16 and fp16 sub-probes.
    flags = getattr(isa, "_arch_flags", "")
    built = isa.build_arch_flags() if hasattr(isa, "build_arch_flags") else ""
    text = "|".join([torch.__version__, _compiler(), type(isa).__name__, str(isa), flags, built,
                     code, repr(args), repr(sorted(kwargs.items()))])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


@functools.cache
def _compiler() -> str:
    """The C++ compiler's version, as inductor names its own probe builds: another compiler (an
    image rebuilt on another base) may lack an instruction set's intrinsics."""
    try:
        from torch._inductor.cpp_builder import get_compiler_version_info, get_cpp_compiler

        return str(get_compiler_version_info(get_cpp_compiler()))
    except Exception:  # noqa: BLE001 - private API: the key is then torch's version and the CPU's
        return ""


_memo: ProbeMemo | None = None


def remember_probes(path: Path) -> ProbeMemo | None:
    """Install the memo (once per process; a later call moves it to ``path``). None where this
    torch has no such probes (its internals moved): inductor then probes as it always did."""
    global _memo
    try:
        from torch._inductor import cpu_vec_isa
    except Exception:  # noqa: BLE001 - no inductor: nothing probes
        return None
    original = getattr(getattr(cpu_vec_isa, "VecISA", None), "check_build", None)
    if original is None:
        return None
    if _memo is not None:
        _memo.use(path)
        return _memo
    memo = ProbeMemo(path, original)

    def check_build(isa: Any, code: str, *args: Any, **kwargs: Any) -> bool:
        return memo(isa, code, *args, **kwargs)

    cpu_vec_isa.VecISA.check_build = check_build
    _memo = memo
    return memo

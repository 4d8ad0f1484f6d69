"""Ahead-of-time compiled modules (VISGATE_COMPILE=aot): torch.export + AOTInductor packages.

Why: with ``torch.compile`` even a full cache hit re-traces every graph in Python on each cold
start (the compile-cache archive only skips inductor's code generation): 10.5 s for FLUX.1-dev
on an H100, 8.2 s for SDXL on an H200, most of the SDXL ≤ 8 s cold-start budget. An AOTInductor
package is the compiled module itself: a warm boot loads a shared library and runs, with no
tracing at all.

How: each target module (the denoiser, the VAE decoder) gets a thin wrapper as its ``forward``.
The first call with a new input signature (shapes, dtypes, strides, devices, the non-tensor
arguments, the weights' dtype) during warmup exports the module with exactly those inputs,
compiles it to a package on the volume, and runs it. A later boot finds the package and only
loads it. The weights are not in the package (``package_constants_in_so=False``): the runner
uses the module's own tensors (``user_managed``), so neither the volume nor the GPU holds a
second copy (24 GB for FLUX.1-dev).

After warmup the wrappers are frozen: a signature warmup did not see runs the module eagerly
(the same policy as torch.compile's ``eager_on_recompile``, runtime/optimize.py). A module that
cannot be exported falls back to the caller's torch.compile route; a package that is corrupt or
does not fit is recompiled and overwritten, never a crash.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from runtime.compile_cache import atomic_file, mark_used, prune
from runtime.errors import brief, is_fatal_device_error, is_no_space, is_out_of_memory

log = logging.getLogger(__name__)

# Inductor options for the package: the weights stay out of it (the module's own tensors are
# bound at load time).
PACKAGE_CONFIGS = {"aot_inductor.package_constants_in_so": False}


@dataclass
class AotStore:
    """Where packages live: ``<volume_dir>/<key>.<module>-<signature>.pt2``, one file each."""

    volume_dir: Path
    key: str
    status: dict[str, Any] = field(default_factory=dict)  # package name -> what happened, seconds

    def path(self, name: str, signature: str) -> Path:
        return self.volume_dir / f"{self.key}.{name}-{signature}.pt2"

    def probes_path(self) -> Path:
        """The CPU's vector-ISA probes that passed (runtime/isa_probes.py)."""
        return self.volume_dir / f"{self.key}.isa.json"

    def put(self, local: Path, final: Path) -> None:
        """Copy a package onto the volume under a temporary name, then rename: never torn."""
        final.parent.mkdir(parents=True, exist_ok=True)
        # Packages age out like archives: keyed by versions and options, most outlive their use.
        prune(final.parent)
        with atomic_file(final) as out, open(local, "rb") as src:
            shutil.copyfileobj(src, out, 16 << 20)


class Unsupported(Exception):
    """This module (or call) cannot be compiled ahead of time; the reason says why."""


# Python values a signature may hold (their repr is their value), besides torch's dtype and device.
PLAIN_VALUES: tuple[type, ...] = (type(None), bool, int, float, str)


def structure(module: Any) -> str:
    """The module's tensors as a package binds them, hashed: each one's name, shape, dtype and
    class. A package reads its constants at the shapes it was compiled for, unchecked: bound to
    the tensors of another model under the same key (a local model directory whose model was
    changed in place: its key holds the directory's name), it ran, and served wrong images."""
    parts = [f"{name}:{tuple(tensor.shape)}{tensor.dtype}{type(tensor).__name__}"
             for name, tensor in module.state_dict(keep_vars=True).items()]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def signature(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], tensors: str = "") -> str:
    """What an exported program is specialised on, hashed: two calls with the same signature
    can share a package; anything else needs its own (or runs eagerly once frozen).
    ``tensors``: the module's ``structure``, taken once (its ~1,000 tensors, not at every call)."""
    import torch
    from torch.utils._pytree import tree_flatten

    leaves, spec = tree_flatten((args, kwargs))
    parts = [str(spec), tensors]
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            parts.append(f"T{tuple(leaf.shape)}{leaf.stride()}{leaf.dtype}{leaf.device}")
        elif isinstance(leaf, (*PLAIN_VALUES, torch.dtype, torch.device)):  # baked into the program
            parts.append(f"{type(leaf).__name__}:{leaf!r}")
        else:  # its repr may hold an address: a key that would differ in every process
            raise Unsupported(f"a {type(leaf).__name__} argument cannot be part of a package key")
    # The weights' dtype: an SDXL VAE is upcast to fp32 for decoding, fp16 otherwise.
    first = next(module.parameters(), None)
    parts.append(f"W{first.dtype if first is not None else None}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


class _Runner:
    """A loaded package bound to the module's current tensors (rebound when they move)."""

    def __init__(self, model: Any, module: Any, graphed: bool = False,
                 entry: dict[str, Any] | None = None, pool: Any = None) -> None:
        self.model = model
        # A CUDA graph per runner (one signature): the denoiser runs 28-50 times per image and
        # is launch-bound at 1024² SDXL (51 ms per step against a 17 ms compute floor).
        self.graphed = graphed
        self.graph: _Graphed | None = None
        self.pool = pool
        self.entry = {} if entry is None else entry
        # Where each constant lives, looked up once: a module cast to another dtype keeps its
        # Parameter objects but replaces their storage, and replaces its buffers outright, so
        # the tensors themselves are read afresh at every check.
        self.names = list(model.get_constant_fqns())
        self.getters = [_getter(module, name) for name in self.names]
        self.pointers: tuple[int, ...] = ()
        self.bind()

    def _current(self) -> list[Any]:
        return [get() for get in self.getters]

    def bind(self) -> None:
        current = self._current()
        # check_full_update: every constant the package needs must be given, or it raises.
        self.model.load_constants(dict(zip(self.names, current)), check_full_update=True,
                                  user_managed=True)
        self.pointers = tuple(t.data_ptr() for t in current)

    def __call__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        # A module cast to another dtype and back (the SDXL VAE's upcast for each decode) has new
        # storage: the package must not read the freed one. (~0.2 ms for FLUX's ~1000 tensors.)
        if tuple(t.data_ptr() for t in self._current()) != self.pointers:
            self.bind()
            self.graph = None  # it replays the old addresses: capture again
        if not self.graphed:
            return self.model(*args, **kwargs)
        if self.graph is None:
            try:
                self.graph = _Graphed(self.model, args, kwargs, pool=self.pool)
                self.entry["cuda_graph"] = "captured"
            except Exception as exc:  # noqa: BLE001 - serve the package without a graph
                log.warning("aot: CUDA graph capture failed (%s); running without", brief(exc))
                self.graphed = False
                self.entry["cuda_graph"] = f"failed ({exc.__class__.__name__})"
                return self.model(*args, **kwargs)
        return self.graph(args, kwargs)


def _static_copy(tensor: Any) -> Any:
    """A graph's input tensor, with the strides the package was compiled for: clone() keeps
    them only for dense tensors, so others are refused (the package then runs ungraphed)."""
    copy = tensor.clone()
    if any(a != b for a, b, size in zip(copy.stride(), tensor.stride(), tensor.shape) if size > 1):
        raise Unsupported("an input that is not dense in memory")
    return copy


class _Graphed:
    """One call of a package recorded as a CUDA graph (what torch.compile's max-autotune does
    for its own graphs, and huggingface/flux-fast for its AOTInductor ones): the inputs are
    copied into the recorded tensors, the graph replays, the outputs are copied out (the next
    replay overwrites them)."""

    def __init__(self, model: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
                 pool: Any = None) -> None:
        import torch
        from torch.utils._pytree import tree_leaves, tree_map_only

        self.inputs = tree_map_only(torch.Tensor, _static_copy, (args, kwargs))
        static_args, static_kwargs = self.inputs
        # Streams and graphs belong to a device: the model's (cuda:N), not the current one.
        self.device = next((t.device for t in tree_leaves(self.inputs)
                            if isinstance(t, torch.Tensor) and t.is_cuda), None)
        if self.device is None:
            raise ValueError("no CUDA input to record a graph on")
        with torch.cuda.device(self.device):
            side = torch.cuda.Stream()  # a first run off the capture stream, as capture requires
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                model(*static_args, **static_kwargs)
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            # One memory pool for all of a module's graphs (one per warmed shape): they replay
            # one at a time and their outputs are copied out at once, so they may share it.
            with torch.cuda.graph(self.graph, pool=pool, stream=torch.cuda.Stream()):
                self.outputs = model(*static_args, **static_kwargs)

    def __call__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        import torch
        from torch.utils._pytree import tree_leaves, tree_map_only

        for static, given in zip(tree_leaves(self.inputs), tree_leaves((args, kwargs))):
            if isinstance(static, torch.Tensor):
                static.copy_(given)
        with torch.cuda.device(self.device):
            self.graph.replay()
        return tree_map_only(torch.Tensor, lambda t: t.clone(), self.outputs)


def _plain_weights(module: Any) -> None:
    """Give weights made under inference_mode (the SDXL VAE, upcast to fp32 inside each job)
    ordinary storage: export marks parameters as needing gradients, which torch refuses for an
    inference tensor outside inference_mode. A copy, once, at compile time; the package is bound
    to whatever the module holds when it runs (the next upcast makes inference tensors again)."""
    import torch

    for owner in module.modules():
        for table in (owner._parameters, owner._buffers):
            for name, tensor in table.items():
                if tensor is not None and tensor.is_inference():
                    if isinstance(tensor, torch.nn.Parameter):  # the same object, for its owners
                        tensor.data = tensor.data.clone()
                    else:
                        table[name] = tensor.clone()


def _host_isa() -> None:
    """What the loader does first for any package, GPU ones included (it compares the host CPU's
    vector ISA with the package's): probe the CPU, once per process, in child processes unless
    an earlier boot's answers are on the volume (runtime/isa_probes.py). Done apart here only to
    time it (``isa_probe_s``); the loader then finds the answer cached."""
    try:
        from torch._inductor.cpu_vec_isa import pick_vec_isa

        pick_vec_isa()
    except Exception:  # noqa: BLE001 - private API, timing only: the loader does it anyway
        pass


def _settle(out: Any) -> None:
    """Wait for a CUDA output's kernels, so a timing covers them (warmup only)."""
    import torch
    from torch.utils._pytree import tree_leaves

    devices = {t.device for t in tree_leaves(out) if isinstance(t, torch.Tensor) and t.is_cuda}
    for device in devices:
        torch.cuda.synchronize(device)


def _getter(module: Any, fqn: str) -> Callable[[], Any]:
    """How to read the module's tensor that a package constant names."""
    if ".parametrizations." in f".{fqn}":
        # A tensor subclass (torchao's quantized weights): export stores its plain inner tensors
        # as <owner>.parametrizations.<attr>.original<i>, in the order torch's own unwrapping
        # gives. Resolved once: quantized weights are never cast or replaced while serving.
        owner_name, _, rest = f".{fqn}".partition(".parametrizations.")
        attr, _, original = rest.partition(".")
        owner = module.get_submodule(owner_name.lstrip("."))
        tensor = owner._parameters.get(attr)
        if tensor is None:
            tensor = owner._buffers.get(attr)
        if tensor is None:
            raise ValueError(f"package constant {fqn} is not a tensor of the module")
        inner = _plain_tensors(tensor)[int(original.removeprefix("original"))]
        return lambda: inner
    owner_name, _, attr = fqn.rpartition(".")
    owner = module.get_submodule(owner_name) if owner_name else module
    for table in (owner._parameters, owner._buffers):
        if table.get(attr) is not None:
            return lambda table=table: table[attr]
    raise ValueError(f"package constant {fqn} is not a tensor of the module")


def _plain_tensors(tensor: Any) -> list[Any]:
    """A subclass tensor's plain parts, in the order torch.export unwraps them (its own code)."""
    from torch._functorch._aot_autograd.subclass_parametrization import UnwrapTensorSubclass

    return list(UnwrapTensorSubclass().right_inverse(tensor))


class AotModule:
    """The wrapper installed as ``module.forward``."""

    def __init__(self, module: Any, name: str, store: AotStore, device: str,
                 fallback: Callable[[], str], cuda_graphs: bool = False) -> None:
        self.module = module
        self.cuda_graphs = cuda_graphs
        self.name = name
        self.store = store
        self.device = device
        self.fallback = fallback  # installs the torch.compile route; returns what it did
        self.eager = module.forward  # the bound method, before the wrapper replaces it
        self.tensors = structure(module)
        self.runners: dict[str, _Runner] = {}
        self.frozen = False
        self.pool: Any = None  # the CUDA graphs' shared memory pool, made with the first graph
        self.eager_calls = 0
        self.unseen: set[str] = set()
        module.forward = self

    def uninstall(self) -> None:
        """Back to the module's own forward, freeing the packages and graphs (their memory is
        what an eager retry after an out-of-memory warmup needs)."""
        if self.module.__dict__.get("forward") is self:
            del self.module.forward
        self.runners.clear()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            sig = signature(self.module, args, kwargs, self.tensors)
        except Unsupported as exc:
            if self.frozen:
                return self.eager(*args, **kwargs)
            return self._fall_back(exc, args, kwargs)
        runner = self.runners.get(sig)
        if runner is None:
            if self.frozen:
                if sig not in self.unseen:  # once per signature: a job may call it 50 times
                    self.unseen.add(sig)
                    log.warning("aot: %s called with inputs no package was compiled for (%s); "
                                "running it eagerly", self.name, sig)
                self.eager_calls += 1
                return self.eager(*args, **kwargs)
            try:
                runner = self._obtain(sig, args, kwargs)
                began = time.perf_counter()
                out = runner(args, kwargs)  # the first run too: a package that loads may still fail
                _settle(out)
                # The first run holds the CUDA graph's capture (and the kernels' loading): a
                # warm boot's cost beside the package's load and binding.
                runner.entry["first_run_s"] = round(time.perf_counter() - began, 3)
            except Exception as exc:  # noqa: BLE001 - export limits vary by model: fall back, never fail
                self._discard(sig, exc)
                return self._fall_back(exc, args, kwargs)
            self.runners[sig] = runner
            return out
        return runner(args, kwargs)

    def _discard(self, sig: str, exc: BaseException | None = None) -> None:
        """Forget a signature that failed, and its package if there is one (unusable, or loaded
        but failing to run): the next boot tries afresh instead of failing the same way. Not
        after running out of memory (as a package reports it too: a RuntimeError), which says
        nothing about a package other workers share."""
        self.store.status.pop(f"{self.name}-{sig}", None)
        # Nor after this container's disk filled up: the package is extracted (and compiled)
        # into the local temporary directory, so a full one fails them all, sound or not. Nor
        # after this GPU failed (an illegal address, an ECC error: the process's CUDA context
        # is lost): the package ran on the others, which would each compile it again, minutes.
        if not is_out_of_memory(exc) and not is_no_space(exc) and not is_fatal_device_error(exc):
            try:
                self.store.path(self.name, sig).unlink(missing_ok=True)
            except OSError:  # a read-only volume (EROFS comes before "missing"): still fall back
                pass

    def _obtain(self, sig: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Runner:
        path = self.store.path(self.name, sig)
        entry = self.store.status.setdefault(f"{self.name}-{sig}", {})
        t0 = time.perf_counter()
        if path.is_file():
            try:
                runner = self._runner(path, entry)
                entry.update(result="hit", seconds=round(time.perf_counter() - t0, 3))
                mark_used(path)
                return runner
            except Exception as exc:  # noqa: BLE001 - corrupt, truncated or from another build
                log.warning("aot package %s unusable (%s); compiling again", path.name, brief(exc))
                entry["previous"] = f"unusable ({exc.__class__.__name__})"
        built = self._compile(path, args, kwargs)
        if built != path:
            entry["volume"] = "not written: this boot runs a local copy, the next compiles again"
        runner = self._runner(built, entry)
        entry.update(result="compiled", seconds=round(time.perf_counter() - t0, 3),
                     bytes=built.stat().st_size)
        log.info("aot: compiled %s for a new input signature in %.1fs (%s)", self.name,
                 entry["seconds"], path.name)
        return runner

    def _compile(self, path: Path, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Path:
        """Export and compile the module into a package; keep it at ``path`` on the volume and
        return that, or, where the volume cannot take it (read-only, full), return a local copy:
        minutes of compiling are not thrown away over a file that could not be shared."""
        import torch

        self.uninstall()  # export traces the module's own forward, not this wrapper
        try:
            # Jobs run under inference_mode, whose tensors cannot be traced through tensor
            # subclasses (torchao's quantized weights): export in plain no-grad mode instead.
            with torch.inference_mode(False), torch.no_grad():
                _plain_weights(self.module)
                program = torch.export.export(self.module, args=args, kwargs=kwargs)
        finally:
            self.module.forward = self
        lifted = list(program.graph_signature.lifted_tensor_constants)
        if lifted:  # tensors made in forward: not the module's, so nothing to bind them to
            raise Unsupported(f"tensor constants outside the module's state: {lifted[:3]}")
        local = Path(tempfile.mkdtemp(prefix="visgate-aot-")) / "package.pt2"
        try:
            # A metadata dict of its own: AOTInductor writes the package's device facts into
            # the one it is given, and the global one is part of every later torch.compile's
            # cache key. Filled, it made a priming boot's fallback compiles (a module export
            # refused) keyed apart from every later boot's: the first warm boot compiled them
            # again (15.6 s on the H200, the SDXL VAE decoder).
            configs = {**PACKAGE_CONFIGS, "aot_inductor.metadata": {}}
            torch._inductor.aoti_compile_and_package(program, package_path=str(local),
                                                     inductor_configs=configs)
        except BaseException:
            shutil.rmtree(local.parent, ignore_errors=True)
            raise
        try:
            self.store.put(local, path)
        except OSError as exc:
            log.warning("aot package %s not kept on the volume (%s); running the local copy",
                        path.name, brief(exc))
            # In this container's temporary directory for the process's lifetime, then removed:
            # a long-lived host (a development machine, a test run) would otherwise keep one
            # package per signature per boot.
            atexit.register(shutil.rmtree, local.parent, ignore_errors=True)
            return local
        shutil.rmtree(local.parent, ignore_errors=True)
        return path

    def _runner(self, path: Path, entry: dict[str, Any]) -> _Runner:
        import torch

        options: dict[str, Any] = {}  # only what is needed: older torch lacks some of these
        if self.device.startswith("cuda:"):
            options["device_index"] = int(self.device.split(":")[1])
        if self.cuda_graphs:
            # No runner pool and its synchronisation, which CUDA graph capture cannot record
            # (jobs run one at a time here anyway).
            options["run_single_threaded"] = True
        probed = time.perf_counter()
        _host_isa()
        began = time.perf_counter()
        model = torch._inductor.aoti_load_package(str(path), **options)
        loaded = time.perf_counter()
        entry["isa_probe_s"] = round(began - probed, 3)
        if self.cuda_graphs and self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        runner = _Runner(model, self.module, graphed=self.cuda_graphs, entry=entry, pool=self.pool)
        # Where a warm boot's seconds go (the H200's SDXL UNet took 33 s to load and bind).
        entry.update(load_s=round(loaded - began, 3), bind_s=round(time.perf_counter() - loaded, 3))
        return runner

    def _fall_back(self, exc: Exception, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        reason = brief(exc, 160)
        log.warning("aot: %s cannot be compiled ahead of time (%s); using torch.compile", self.name,
                    reason)
        self.uninstall()
        done = self.fallback()
        self.store.status[f"{self.name}-fallback"] = {"reason": reason, "instead": done}
        return self.module(*args, **kwargs)

"""Cold start by stage: the real worker, a fresh process per boot, timed up to its ready webhook.

    python -m warmup.bench_coldstart                                   # tiny-flux, CPU: (a), warm-eager
    python -m warmup.bench_coldstart --scenarios all --repeat 3        # + compile cache cold / warm
    python -m warmup.bench_coldstart --mode synthetic --model sdxl --device cuda --volume /mnt/ci
    python -m warmup.bench_coldstart --mode real --model black-forest-labs/FLUX.1-dev --device cuda
    python -m warmup.bench_coldstart --entry queue --jobs 5            # as on an endpoint: the job queue

Each boot is ``python -m runtime --rp_serve_api`` (warmup.local_worker) with ``VISGATE_WEBHOOK``
pointing at a real receiver on 127.0.0.1 (tests.support.receiver), a fresh ``TMPDIR`` (a new
container has an empty local inductor directory) and the scenario's volume:

    empty         (a) empty cache: weights from the hub (a local hub server in tiny mode, serving
                  a built-in tiny model with the decoys real repositories carry, as a hub id)
    warm-weights  (b) weights on local disk, compile cache empty (VISGATE_COMPILE=regional)
    warm-cache    (c) weights on local disk, compile cache on the volume from an earlier boot
    warm-eager    weights on local disk, VISGATE_COMPILE=off (the CPU default)

Per boot, from the ready payload's boot record: every stage's seconds; plus, from this process's
clock: process start -> ``main()`` entered (interpreter start and imports), time inside the
record but in no stage ("other"), record -> POST received ("announce"), process start -> POST
("ready"), -> the serving port accepting connections ("serving") and one job after that ("first
job"); with ``--jobs N``, N more jobs give the served worker's seconds per image in the same run
(on a GPU, beside the latency target). Medians over ``--repeat``. Results: ``warmup/results/coldstart-<mode>-<model>-<machine>.json``
and a Markdown table. Timings never fail the run; a boot that crashes does (exit 1).

Synthetic mode (GPU, no hub) writes the full-size random-weight pipeline once under ``--volume``
and boots it as a local directory: (a) needs a hub and is skipped there. The OS file cache is
not dropped between boots: warm scenarios read the weights from page cache, as a second
container on the same host does.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runtime.errors import redact_values  # noqa: E402
from runtime.settings import COMPILE_MODES, secrets_in  # noqa: E402
from warmup.bench_latency import p95  # noqa: E402
from warmup.check_args import comma_choices  # noqa: E402
from warmup.local_worker import LocalWorker, QueuedWorker, worker_env  # noqa: E402
from warmup.machine import machine_info, result_path  # noqa: E402
from warmup.report import coldstart_section, machine_label  # noqa: E402
from warmup.synthetic import record_mode  # noqa: E402
from warmup.targets import coldstart_target, job_target  # noqa: E402

log = logging.getLogger("bench_coldstart")

SCENARIOS = {
    "empty": "(a) empty cache: weights from the hub",
    "warm-weights": "(b) warm weights, cold compile cache",
    "warm-cache": "(c) warm weights, warm compile cache",
    "warm-eager": "warm weights, no compile",
}
STAGES = ("settings", "fetch", "load", "optimize", "warmup", "serve")
# Column order of a boot, start to ready: they add up to ``ready_s``.
PARTS = ("import_s", *(f"{s}_s" for s in STAGES), "other_s", "announce_s")
# The load stage's own split (the boot record's load entry).
LOAD_PARTS = ("load_imports_s", "load_device_init_s", "load_weights_s")
# The scenario the cold-start target (warmup/targets.py) is for: warm caches.
TARGET_SCENARIO = "warm-cache"
JOB = {"prompt": "a lighthouse on a cliff at dusk", "seed": 1}
# How jobs reach the worker: the SDK's local API server, or Runpod's job queue (a stand-in).
WORKERS = {"api": LocalWorker, "queue": QueuedWorker}


# ---- where the weights come from ------------------------------------------------------------------
class Source:
    """The model as the worker sees it: ``HF_MODEL_ID`` and the hub environment."""

    model_id: str
    hub_url: str | None = None

    def env(self) -> dict[str, str]:
        env = {"HF_MODEL_ID": self.model_id, "HF_HUB_OFFLINE": "0"}
        if self.hub_url:
            env["HF_ENDPOINT"] = self.hub_url
        if os.environ.get("HF_TOKEN"):
            env["HF_TOKEN"] = os.environ["HF_TOKEN"]
        return env

    def hub_requests(self) -> int | None:
        return None

    def skip_reason(self, scenario: str) -> str | None:
        return None

    def close(self) -> None:
        pass


class LocalHub(Source):
    """A built-in tiny model, built in the hub layout with decoys, served by the local hub."""

    def __init__(self, model: str, work: Path) -> None:
        from tests.support.hub_repos import build_repo
        from tests.support.hub_server import HubServer

        self.model_id = "bench/" + model.split("/")[-1]
        folder = work / "hub-repo"
        shutil.rmtree(folder, ignore_errors=True)  # built deterministically: same files, same commit
        build_repo(model, folder)
        self.hub = HubServer().start()
        self.hub.add_repo(self.model_id, folder)
        self.hub_url = self.hub.url

    def hub_requests(self) -> int | None:
        return len([r for r in self.hub.requests() if r.kind != "stats"])

    def close(self) -> None:
        self.hub.stop()


class RealHub(Source):
    def __init__(self, model: str, endpoint: str | None) -> None:
        self.model_id = model
        self.hub_url = endpoint or os.environ.get("HF_ENDPOINT")


class SyntheticDir(Source):
    """Full-size random weights written once under the volume; booted as a local directory."""

    def __init__(self, model: str, volume: Path, device: str) -> None:
        dest = volume / "synthetic" / model
        if not (dest / ".complete").is_file():
            # In a child process: this one must not hold GPU memory while the workers boot.
            log.info("writing the synthetic %s weights to %s (once per volume)", model, dest)
            subprocess.run([sys.executable, "-m", "warmup.synthetic", "save", model, str(dest), device],
                           cwd=ROOT, check=True)
        self.model_id = str(dest)

    def skip_reason(self, scenario: str) -> str | None:
        if scenario == "empty":
            return "synthetic weights are a local directory: (a) needs a hub (use --mode real)"
        return None


# ---- one boot ---------------------------------------------------------------------------------------
def boot_once(env: dict[str, str], work: Path, name: str, timeout: float,
              first_job: bool, jobs: int = 0, entry: str = "api",
              result_latency: float = 0.0) -> dict[str, Any]:
    """Boot the worker once; return its timings (or ``error`` and the log's tail). ``entry``:
    "api", the SDK's local API server (/runsync); "queue", Runpod's job queue (a stand-in)."""
    from tests.support.receiver import WebhookReceiver

    tmp = work / "tmp" / name  # a new container's empty /tmp: no local inductor cache
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    log_path = work / "logs" / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with WebhookReceiver() as hook:
        worker = WORKERS[entry]({**env, "VISGATE_WEBHOOK": hook.url, "TMPDIR": str(tmp),
                                 "CUDA_CACHE_PATH": str(tmp / "nv")},
                                log_path=log_path, boot_timeout=timeout,
                                **({"result_latency": result_latency} if result_latency else {}))
        for inherited in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
            worker.env.pop(inherited, None)  # the worker chooses these itself (compile cache)
        spawn = time.time()
        try:
            worker.start()
            serving_at = spawn + (worker.ready_seconds or 0.0)
            received = hook.wait_for(1, timeout=60)
            result = timings(spawn, serving_at, received)
            if first_job and "error" not in result:
                t0 = time.perf_counter()
                answer = worker.runsync(JOB, timeout=timeout)
                result["first_job_s"] = round(time.perf_counter() - t0, 3)
                if answer.get("status") != "COMPLETED" or "error" in (answer.get("output") or {}):
                    result["error"] = f"first job failed: {str(answer)[:300]}"
                elif jobs:
                    result.update(steady_jobs(worker, jobs, timeout))
        except (RuntimeError, TimeoutError, OSError) as exc:
            result = {"error": f"{exc.__class__.__name__}: {exc}"}
            # The worker may have booted and announced ready, then failed to serve: keep the
            # stage timings its webhook carried beside the error.
            received = hook.wait_for(1, timeout=5)
            if received and received[0].json().get("status") == "ready":
                result = {**timings(spawn, spawn, received), **result, "serving_s": None}
        finally:
            worker.stop()
    if "error" in result:
        result["log_tail"] = log_path.read_text(errors="replace")[-3000:]
    return result


def steady_jobs(worker: LocalWorker | QueuedWorker, jobs: int, timeout: float) -> dict[str, Any]:
    """Seconds per image once the worker is warm: ``jobs`` jobs after the first at the model's
    defaults (so PNG encoding, base64 and the HTTP hops count too: a little more than
    bench_latency's median, which stops at the image). Through the local API, each a /runsync
    round trip; on the queue, all queued at once (a busy endpoint), each job's seconds from the
    last one's result to its own: the worker's time between jobs counts too."""
    inputs = [{**JOB, "seed": seed} for seed in range(2, 2 + jobs)]
    if isinstance(worker, QueuedWorker):
        seconds, answers = worker.backlog(inputs, timeout=timeout)
    else:
        seconds, answers = [], []
        for job_input in inputs:
            t0 = time.perf_counter()
            answers.append(worker.runsync(job_input, timeout=timeout))
            seconds.append(time.perf_counter() - t0)
    for n, answer in enumerate(answers, start=1):
        if answer.get("status") != "COMPLETED" or "error" in (answer.get("output") or {}):
            return {"error": f"job {n} after the first failed: {str(answer)[:300]}"}
    return {"job_s": round(statistics.median(seconds), 3), "job_p95_s": round(p95(seconds), 3),
            "jobs": len(seconds)}


def timings(spawn: float, serving_at: float, received: list[Any]) -> dict[str, Any]:
    """Stage seconds from the ready payload's boot record, placed on this process's clock."""
    if not received:
        return {"error": "no webhook received"}
    payload = received[0].json()
    if payload.get("status") != "ready":
        return {"error": f"boot announced {payload.get('status')}: {payload.get('error')}",
                "payload": payload}
    boot = payload["boot"]
    stages = boot.get("stages", {})
    out: dict[str, Any] = {"import_s": round(boot["started_at"] - spawn, 3)}
    for stage in STAGES:
        out[f"{stage}_s"] = stages.get(stage, {}).get("seconds")
    staged = sum(v for k, v in out.items() if k != "import_s" and v is not None)
    total = boot["total_seconds"]
    out["other_s"] = round(max(0.0, total - staged), 3)  # inside the record, in no stage
    out["announce_s"] = round(received[0].at - (boot["started_at"] + total), 3)
    out["ready_s"] = round(received[0].at - spawn, 3)
    out["serving_s"] = round(serving_at - spawn, 3)
    fetch = stages.get("fetch", {})
    out["fetch"] = {k: fetch[k] for k in ("source", "cache", "bytes_downloaded", "hub_requests",
                                          "files") if k in fetch}
    compile_status = (stages.get("warmup", {}).get("compile_cache")
                      or stages.get("optimize", {}).get("compile_cache"))
    if compile_status:
        out["compile_cache"] = {k: compile_status[k] for k in ("restored", "counters", "saved_bytes",
                                                               "compile_seconds", "aot") if k in compile_status}
    # Of the load stage: library imports, the CUDA context, the weights.
    load = stages.get("load", {})
    out["load_imports_s"] = load.get("imports_seconds")
    out["load_device_init_s"] = load.get("device_init_seconds")
    out["load_weights_s"] = load.get("weights_seconds")
    out["applied"] = sorted(stages.get("optimize", {}).get("applied", {}))
    out["device"] = boot.get("device")
    return out


# ---- scenarios ----------------------------------------------------------------------------------------
def scenario_env(scenario: str, source: Source, cache: Path, args: argparse.Namespace) -> dict[str, str]:
    env = {**source.env(), "DEVICE": args.device, "VISGATE_CACHE_DIR": str(cache), **args.extra_env}
    env["VISGATE_COMPILE"] = scenario_compile(scenario, args)
    return env


def scenario_compile(scenario: str, args: argparse.Namespace) -> str:
    if scenario == "warm-eager":
        return "off"
    if scenario == "empty":  # everything as a first boot with default settings would do
        return args.compile or ("regional" if args.device.startswith("cuda") else "off")
    return args.compile if args.compile not in (None, "off") else "regional"


def prime_weights(source: Source, cache: Path, args: argparse.Namespace) -> None:
    """Put the weights on the volume without booting (the worker's own fetch, via prefetch)."""
    if isinstance(source, SyntheticDir):
        return
    env = worker_env({**source.env(), "DEVICE": args.device})
    proc = subprocess.run([sys.executable, "-m", "runtime.prefetch", "--model", source.model_id,
                           "--cache-dir", str(cache)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=args.boot_timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"prefetch failed ({proc.returncode}): {proc.stderr[-2000:]}")


def run_all(args: argparse.Namespace, source: Source, work: Path,
            checkpoint: Callable[[dict[str, list[dict[str, Any]]]], None] = lambda runs: None,
            ) -> dict[str, list[dict[str, Any]]]:
    """Every scenario, ``--repeat`` times; ``checkpoint(runs)`` after each boot."""
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in args.scenarios}
    shared_cache = work / "cache-shared"
    primed = False
    for i in range(args.repeat):
        if "empty" in args.scenarios and not source.skip_reason("empty"):
            cache = work / f"cache-{i}"  # a new, empty volume per repeat
        else:
            cache = shared_cache
            if not primed:
                prime_weights(source, cache, args)
                primed = True
        for scenario in args.scenarios:
            reason = source.skip_reason(scenario)
            if reason:
                if i == 0:
                    runs[scenario].append({"skipped": reason})
                continue
            if scenario == "warm-weights":
                shutil.rmtree(cache / "compile", ignore_errors=True)
            priming = None
            if scenario == "warm-cache" and not any((cache / "compile").glob("*.tar")):
                log.info("priming the compile cache (one boot, kept beside the scenario: its cold compile)")
                priming = boot_once(scenario_env(scenario, source, cache, args), work, f"prime-{i}",
                                    args.boot_timeout, first_job=False, entry=args.entry)
            before = source.hub_requests()
            log.info("boot %d/%d: %s", i + 1, args.repeat, scenario)
            result = boot_once(scenario_env(scenario, source, cache, args), work,
                               f"{scenario}-{i}", args.boot_timeout, args.first_job, args.jobs,
                               entry=args.entry, result_latency=args.result_latency)
            after = source.hub_requests()
            if before is not None and after is not None:
                result["hub_requests_seen"] = after - before
            result.update(scenario=scenario, repeat=i, compile=scenario_compile(scenario, args))
            if priming is not None:  # what the same boot cost with nothing compiled yet
                result["priming_boot"] = {k: priming[k] for k in ("ready_s", "warmup_s", "compile_cache",
                                                                  "error") if k in priming}
            runs[scenario].append(result)
            checkpoint(runs)
            if "error" in result:
                log.error("%s boot %d failed: %s", scenario, i, result["error"])
            else:
                log.info("%s: ready in %.2fs", scenario, result["ready_s"])
    return runs


def medians(runs: list[dict[str, Any]]) -> dict[str, float]:
    good = [r for r in runs if "error" not in r and "skipped" not in r]
    keys = (*PARTS, *LOAD_PARTS, "ready_s", "serving_s", "first_job_s", "job_s", "job_p95_s")
    out = {}
    for key in keys:
        values = [r[key] for r in good if r.get(key) is not None]
        if values:
            out[key] = round(statistics.median(values), 3)
    return out


def summarize(args: argparse.Namespace, source: Source,
              runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    on_gpu = args.device.startswith("cuda")
    target = coldstart_target(args.model) if on_gpu else None
    per_image = job_target(args.model) if on_gpu and args.jobs else None
    scenarios = {}
    for name, items in runs.items():
        entry: dict[str, Any] = {"label": SCENARIOS[name], "compile": scenario_compile(name, args)}
        skipped = [r["skipped"] for r in items if "skipped" in r]
        if skipped:
            entry["skipped"] = skipped[0]
        else:
            entry["median"] = medians(items)
            entry["n"] = sum(1 for r in items if "error" not in r)
            entry["errors"] = sum(1 for r in items if "error" in r)
            if target and name == TARGET_SCENARIO:
                entry["target_ready_s"] = target
            if per_image and entry["compile"] != "off":
                entry["target_job_s"] = per_image
        entry["runs"] = [r for r in items if "skipped" not in r]
        scenarios[name] = entry
    return {"what": "coldstart", "mode": record_mode(args.mode), "model": args.model,
            "model_id": source.model_id,
            "device": args.device, "entry": args.entry, "repeat": args.repeat,
            "first_job": args.first_job, "jobs": args.jobs,
            **({"result_latency_s": args.result_latency} if args.result_latency else {}),
            "env": args.extra_env,  # part of the regression check's key (secrets are redacted)
            "command": " ".join(["python", "-m", "warmup.bench_coldstart", *args.argv]),
            "parts": list(PARTS), "machine": machine_info(args.device), "scenarios": scenarios}


def recorded_secrets(args: argparse.Namespace, source: Source) -> tuple[str, ...]:
    """The secrets of every environment the boots were given (this process's, the model source's,
    ``--env``): the record's command line holds ``--env`` and ``--endpoint`` as typed, and a
    failed boot's error can echo its environment."""
    return tuple(dict.fromkeys(secret for env in (os.environ, source.env(), args.extra_env)
                               for secret in secrets_in(env)))


def render(result: dict[str, Any]) -> str:
    entry = " on the job queue" if result.get("entry") == "queue" else ""
    return "\n".join([f"## cold start{entry}: {result['mode']} {result['model']} on "
                      f"{machine_label(result['machine'])} (median of {result['repeat']})", "",
                      *coldstart_section(result)])


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("tiny", "synthetic", "real"), default="tiny")
    parser.add_argument("--model", default=None,
                        help="tiny: visgate/tiny-flux (default) or visgate/tiny-sdxl; synthetic: "
                             "flux-dev, flux-schnell, sdxl; real: a hub id")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--scenarios", default=None,
                        help=f"comma list of {', '.join(SCENARIOS)} or 'all'; default: "
                             "empty,warm-eager on CPU, all on CUDA (synthetic: no empty)")
    parser.add_argument("--compile", default=None, choices=COMPILE_MODES,
                        help="VISGATE_COMPILE for (a) (default: the worker's default for the device) "
                             "and for (b)/(c) (default regional); a result file of its own")
    parser.add_argument("--entry", choices=tuple(WORKERS), default="api",
                        help="how jobs reach the worker: the SDK's local API server (/runsync), or "
                             "Runpod's job queue (a stand-in on 127.0.0.1: `python -m runtime` as on "
                             "an endpoint, its ready after the SDK's start-up checks)")
    parser.add_argument("--result-latency", type=float, default=0.0, metavar="SECONDS",
                        help="--entry queue: the stand-in answers each result this late, as the "
                             "network to Runpod's API would (upload and round trip)")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--first-job", action=argparse.BooleanOptionalAction, default=True,
                        help="time one job after the worker serves")
    parser.add_argument("--jobs", type=int, default=0,
                        help="after the first job, time this many more: seconds per image from "
                             "the served worker, in the same run as its cold start")
    parser.add_argument("--endpoint", default=None, help="real mode: HF_ENDPOINT (default: the hub)")
    parser.add_argument("--volume", type=Path, default=None,
                        help="synthetic mode: persistent folder for the written weights "
                             "(default .cache/bench-volume)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra worker environment, e.g. VISGATE_ATTENTION=cudnn")
    parser.add_argument("--boot-timeout", type=float, default=900.0)
    parser.add_argument("--workdir", type=Path, default=None, help="keep caches and logs here")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    args.argv = argv
    args.model = args.model or {"tiny": "visgate/tiny-flux", "synthetic": "sdxl"}.get(args.mode)
    if not args.model:
        parser.error("--model is required in real mode")
    if args.scenarios in (None, ""):
        scenarios = list(SCENARIOS) if args.device.startswith("cuda") else ["empty", "warm-eager"]
        if args.mode == "synthetic":
            scenarios = [s for s in scenarios if s != "empty"]
    elif args.scenarios == "all":
        scenarios = list(SCENARIOS)
    else:
        scenarios = comma_choices(parser, "--scenarios", args.scenarios, SCENARIOS)
    args.scenarios = [s for s in SCENARIOS if s in scenarios]  # always in boot order
    if not all("=" in item for item in args.env):  # not echoed: the item may be a pasted token
        parser.error("--env takes NAME=VALUE; an item has no '='")
    args.extra_env = dict(item.split("=", 1) for item in args.env)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.jobs < 0 or (args.jobs and not args.first_job):
        parser.error("--jobs needs a non-negative count and --first-job")
    if args.result_latency < 0 or (args.result_latency and args.entry != "queue"):
        parser.error("--result-latency needs a non-negative number of seconds and --entry queue")
    return args


def make_source(args: argparse.Namespace, work: Path) -> Source:
    if args.mode == "tiny":
        return LocalHub(args.model, work)
    if args.mode == "synthetic":
        return SyntheticDir(args.model, args.volume or ROOT / ".cache" / "bench-volume", args.device)
    return RealHub(args.model, args.endpoint)


def exit_on_sigterm() -> None:
    """SIGTERM to this process alone (``kill PID``, a container or service stop) ends Python
    without its ``finally`` blocks: the worker it booted would go on serving as an orphan, holding
    the GPU and its memory under the next benchmark. As SystemExit it stops the worker
    (LocalWorker.stop), the hub and the work folder; the partial result is already written."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    exit_on_sigterm()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    with tempfile.TemporaryDirectory(prefix="bench-coldstart-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        source = make_source(args, work)
        slug = (args.model.replace("/", "_") + (f"-{args.compile}" if args.compile else "")
                + ("-queue" if args.entry == "queue" else ""))
        out = args.out or result_path(f"coldstart-{record_mode(args.mode)}-{slug}", args.device)
        out.parent.mkdir(parents=True, exist_ok=True)
        secrets = recorded_secrets(args, source)

        def write(runs: dict[str, list[dict[str, Any]]], partial: bool) -> dict[str, Any]:
            # Written after every boot too: a run killed at its time limit keeps what it measured.
            result = {**summarize(args, source, runs), **({"partial": True} if partial else {})}
            # The file is kept (and may be committed): every value is cleaned, after a JSON round
            # trip so that what is cleaned is what is written.
            result = redact_values(json.loads(json.dumps(result, default=str)), secrets)
            out.write_text(json.dumps(result, indent=1) + "\n")
            return result

        try:
            runs = run_all(args, source, work, checkpoint=lambda runs: write(runs, partial=True))
        finally:
            source.close()
    result = write(runs, partial=False)
    print(render(result))
    print(f"wrote {out}")
    failed = [r for entry in result["scenarios"].values() for r in entry["runs"] if "error" in r]
    if failed:
        print("FAILED boots: " + ", ".join(f"{r['scenario']}#{r['repeat']}" for r in failed),
              file=sys.stderr)
        for r in failed:
            print(f"--- {r['scenario']}#{r['repeat']}: {r['error']}\n{r.get('log_tail', '')}",
                  file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Every benchmark command the documentation gives is one its benchmark accepts.

A GPU session is 15 minutes: a flag renamed in a benchmark but not in BENCHMARKS.md's plan for
the next session would fail that call after minutes of setup. So each ``python -m warmup.<bench>``
command in README.md, BENCHMARKS.md and the workflows goes through the benchmark's own parser,
and each spec line the plan hands to warmup/gpu_check.sh goes through the script's own check.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from warmup import check_args

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / ".github" / "workflows").glob("*.yml"))]
# A command runs to the end of its code span, line, table cell or shell operator.
COMMAND = re.compile(r"python3? -m warmup\.(\w+)([^`\n|&;>]*)")
SPEC = re.compile(r"\b((?:BENCH|COLDSTART|SHAPES)_SPECS)='([^']*)'")
NOT_ARGPARSE = {"synthetic"}  # `python -m warmup.synthetic save KIND DEST`: checked by its own usage


def documented(synopses: bool) -> list[tuple[str, str, str]]:
    """(doc, bench, arguments) of the commands, or of the usage synopses ("[--repeat N]")."""
    found = []
    for doc in DOCS:
        text = re.sub(r"\\\n\s*", " ", doc.read_text())  # shell line continuations
        for bench, args in COMMAND.findall(text):
            if ("[" in args) == synopses:
                found.append((doc.name, bench, args))
    return found


def documented_commands() -> list[tuple[str, str, list[str]]]:
    return [(doc, bench, shlex.split(args)) for doc, bench, args in documented(synopses=False)]


def documented_specs() -> list[tuple[str, str]]:
    return sorted({m for doc in DOCS for m in SPEC.findall(doc.read_text())})


def gpu_check_args_only(out: Path, **specs: str) -> subprocess.CompletedProcess[str]:
    """warmup/gpu_check.sh with GPU_CHECK_ARGS_ONLY=1; its default specs unless ``specs`` given."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_SPECS")}
    if specs:
        env.update({"BENCH_SPECS": "", "COLDSTART_SPECS": "", "SHAPES_SPECS": "", **specs})
    return subprocess.run(["bash", str(ROOT / "warmup" / "gpu_check.sh")], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**env, "GPU_CHECK_ARGS_ONLY": "1", "OUT": str(out)})


def test_the_documentation_gives_benchmark_commands_to_check() -> None:
    commands = documented_commands()
    benches = {bench for _, bench, _ in commands}
    # The extraction itself can break: then nothing would be checked and every test pass.
    assert len(commands) >= 30 and len(documented(synopses=True)) >= 2 and {"bench_latency", "bench_coldstart", "bench_shapes"} <= benches
    assert benches - NOT_ARGPARSE <= set(check_args.BENCHES), "a benchmark without parse_args()"
    assert {name for name, _ in documented_specs()} == {"BENCH_SPECS", "COLDSTART_SPECS", "SHAPES_SPECS"}


@pytest.mark.parametrize("doc, bench, argv", [c for c in documented_commands() if c[1] not in NOT_ARGPARSE],
                         ids=lambda v: v if isinstance(v, str) else None)
def test_each_documented_command_is_accepted(doc: str, bench: str, argv: list[str], capsys) -> None:
    try:
        check_args.check(bench, argv)
    except SystemExit as exc:
        pytest.fail(f"{doc}: python -m warmup.{bench} {shlex.join(argv)} refused ({exc.code}): "
                    f"{capsys.readouterr().err.strip().splitlines()[-1]}")


@pytest.mark.parametrize("doc, bench, synopsis", documented(synopses=True))
def test_each_flag_a_usage_synopsis_names_exists(doc: str, bench: str, synopsis: str, capsys) -> None:
    with pytest.raises(SystemExit):
        check_args.check(bench, ["--help"])
    usage = capsys.readouterr().out
    assert set(re.findall(r"--[\w-]+", synopsis)) <= set(re.findall(r"--[\w-]+", usage)), (doc, synopsis)


@pytest.mark.parametrize("name, spec", documented_specs())
def test_each_documented_gpu_check_spec_is_accepted(name: str, spec: str, tmp_path: Path) -> None:
    proc = gpu_check_args_only(tmp_path / "out", **{name: spec})
    assert proc.returncode == 0, proc.stderr


def test_gpu_check_default_specs_are_accepted(tmp_path: Path) -> None:
    proc = gpu_check_args_only(tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "out").exists()  # only parsed: nothing ran, nothing was written


@pytest.mark.parametrize("name, spec, said", [
    ("BENCH_SPECS", "sdxl 30 170 --variants tunned", "unknown --variants tunned"),
    ("BENCH_SPECS", "sdxl 30 170 --quantize fp9", "invalid choice: 'fp9'"),
    ("COLDSTART_SPECS", "sdxl 2 560 --scenarios warm-cache,warm-cahce", "unknown --scenarios warm-cahce"),
    ("COLDSTART_SPECS", "sdxl 2 560 --jobcount 5", "unrecognized arguments: --jobcount 5"),
    # A prefix is refused, not taken for the flag it abbreviates: a documented `--job` would pass
    # today and break the day a second flag shares the prefix.
    ("COLDSTART_SPECS", "sdxl 2 560 --job 5", "unrecognized arguments: --job 5"),
    ("COLDSTART_SPECS", "sdxl 2 560 --env hf_notaname", "--env takes NAME=VALUE"),
    ("SHAPES_SPECS", "sdxl 1024 832by1216 30 300", "is not HxW"),
])
def test_gpu_check_refuses_a_bad_spec_before_running_anything(name: str, spec: str, said: str,
                                                              tmp_path: Path) -> None:
    """Among good specs, one bad line stops the call, and says which flag and which command."""
    proc = gpu_check_args_only(tmp_path / "out", **{"BENCH_SPECS": "sdxl 30 170", name: spec})
    assert proc.returncode != 0
    assert said in proc.stderr and "refused: a bench_" in proc.stderr


def test_check_args_names_an_unknown_benchmark(capsys) -> None:
    with pytest.raises(SystemExit, match="unknown benchmark 'bench_latncy'"):
        check_args.main(["bench_latncy", "--mode", "tiny"])
    check_args.main(["bench_latency", "--mode", "tiny", "--variants", "tuned"])  # and passes a good one


def test_the_cpu_smoke_runs_every_benchmark_and_mode_the_gpu_workflow_runs() -> None:
    """scripts/bench_smoke.sh (every CI run) is where a GPU step's code path first runs: a
    benchmark mode (or a cold start's entry) the GPU workflow uses and the smoke does not
    (bench_latency's synthetic build was one) would first run, and break, on the GPU runner."""
    def runs(path: Path) -> set[tuple[str, str]]:
        text = re.sub(r"\\\n\s*", " ", path.read_text())
        found = set()
        for bench, args in COMMAND.findall(text):
            found.add((bench, "mode=" + (re.search(r"--mode (\S+)", args) or [None, "tiny"])[1]))
            if bench == "bench_coldstart":
                found.add((bench, "entry=" + (re.search(r"--entry (\S+)", args) or [None, "api"])[1]))
        return found

    gpu = runs(ROOT / ".github" / "workflows" / "gpu-benchmarks.yml") - {
        ("check_regression", "mode=tiny"), ("report", "mode=tiny")}
    assert {("bench_latency", "mode=synthetic"), ("bench_coldstart", "mode=synthetic"),
            ("bench_coldstart", "entry=queue")} <= gpu
    assert gpu <= runs(ROOT / "scripts" / "bench_smoke.sh")


@pytest.mark.parametrize("limit, args, said", [
    # Killed while it imports torch: a run past its time limit.
    ("0.3", ["warmup.bench_latency", "--mode", "tiny", "--size", "256", "--steps", "1", "--runs", "1",
             "--no-cache-phases"], "bench-x.txt: TIMED OUT after 0.3s; its results are partial"),
    ("60", ["warmup.bench_latency", "--mode", "nonsense"], "bench-x.txt: FAILED (exit 2)"),
])
def test_gpu_check_summary_says_when_a_benchmark_did_not_finish(limit: str, args: list[str], said: str,
                                                                 tmp_path: Path) -> None:
    """The summary file keeps a run's last lines; after a timeout those are a figure from the
    middle of it, which read as the result unless the summary says otherwise. The script's own
    ``summary`` and ``bench`` functions, run on a benchmark that does not finish."""
    script = (ROOT / "warmup" / "gpu_check.sh").read_text()
    functions = "\n".join(re.search(rf"^{name}\(\) {{.*?^}}$", script, re.M | re.S)[0] for name in ("summary", "bench"))
    module = args[0].split(".", 1)[1]
    run = subprocess.run(["bash", "-c", functions + '\nbench run "$@"', "gpu_check", limit, "30", "bench-x.txt",
                          module, *args[1:], "--out", str(tmp_path / "x.json")], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OUT": str(tmp_path), "PYTHONPATH": str(ROOT),
                              # python3 there is this interpreter, with torch (seconds to import)
                              "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    assert run.returncode == 0, run.stderr  # the next benchmarks still run
    assert (tmp_path / "bench-x.txt").read_text().splitlines()[-1] == said

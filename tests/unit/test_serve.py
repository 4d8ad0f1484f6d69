"""The serve stage: the job SDK, imported on a side thread while the worker boots, and how the
queue worker ends on a stop signal (StopWhenIdle)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from runtime.serve import JobSdk

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(60)


def test_a_job_sdk_that_fails_to_import_fails_the_serve_stage_in_the_main_thread() -> None:
    """The SDK is imported on a side thread; its failure must still stop the boot (raised where
    the serve stage asks for it, after one more try there), not vanish with the thread."""
    class Missing(JobSdk):
        def _load(self):
            import visgate_no_such_job_sdk  # type: ignore[import-not-found]  # noqa: F401

    sdk = Missing()
    with pytest.raises(ModuleNotFoundError, match="visgate_no_such_job_sdk"):
        sdk.start_function()


def test_a_side_import_that_failed_once_is_retried_in_the_main_thread(caplog) -> None:
    """A passing failure on the side thread (CPython's import-lock _DeadlockError when both
    threads import one package) costs a second import, not the boot."""
    import threading

    class FlakyOnSideThread(JobSdk):
        def _load(self):
            if threading.current_thread() is not threading.main_thread():
                raise ImportError("deadlock detected by _ModuleLock('asyncio')")
            return print

    assert FlakyOnSideThread().start_function() is print
    assert "importing it again" in caplog.text


@pytest.fixture
def sdk_thresholds(monkeypatch):
    """Sets the SDK's own start-up thresholds (read from the environment at its import). The
    SDK's registry of checks starts empty and unregistered, as in a fresh process, and its
    network check (a TCP connection to 8.8.8.8:53: no local server can stand in) passes."""
    from runpod.serverless.modules import rp_fitness, rp_system_fitness

    async def reachable() -> None:
        pass

    monkeypatch.setattr(rp_system_fitness, "_check_network_connectivity", reachable)
    monkeypatch.delenv("RUNPOD_SKIP_AUTO_SYSTEM_CHECKS", raising=False)
    monkeypatch.setattr(rp_fitness, "_fitness_checks", [])
    monkeypatch.setattr(rp_fitness, "_registration_state", {"gpu_check": False, "system_checks": False})

    def set_them(memory_gb: float, disk_percent: float) -> None:
        monkeypatch.setattr(rp_system_fitness, "MIN_MEMORY_GB", memory_gb)
        monkeypatch.setattr(rp_system_fitness, "MIN_DISK_PERCENT", disk_percent)

    return set_them


@pytest.mark.parametrize("memory_gb, disk_percent, said, advice", [
    (0.0, 100.0, "Insufficient disk space", "a larger container disk, or a network volume"),
    (1e9, 0.0, "Insufficient memory", "a machine with more memory"),
])
def test_a_machine_the_sdk_would_refuse_fails_the_serve_stage(sdk_thresholds, memory_gb: float,
                                                              disk_percent: float, said: str,
                                                              advice: str) -> None:
    """On Runpod's queue the SDK checks free memory and the space left on / before its first
    job, and ends the process if either is short: after the ready webhook. Checked before it,
    with the SDK's own functions, it is a failed boot at the serve stage that says why."""
    from runpod.serverless.modules.rp_system_fitness import _check_disk_space, _check_memory_availability

    from runtime.errors import BootError

    sdk_thresholds(memory_gb, disk_percent)
    with pytest.raises(RuntimeError, match=said):  # what the SDK itself would do
        (_check_disk_space if "disk" in said else _check_memory_availability)()
    with pytest.raises(BootError, match=f"Runpod's job SDK would stop this worker before its "
                                        f"first job: {said}.*; .*{advice}") as info:
        JobSdk().check_machine()
    assert info.value.stage == "serve"


def test_a_machine_the_sdk_accepts_passes_and_leaves_the_sdk_no_check_to_run_again(
        sdk_thresholds, caplog) -> None:
    import asyncio

    from runpod.serverless.modules import rp_fitness

    sdk_thresholds(0.0, 0.0)
    with caplog.at_level("INFO"):
        JobSdk().check_machine()
    assert "start-up checks passed before ready" in caplog.text
    assert "_memory_check, _disk_check, _network_check" in caplog.text
    assert rp_fitness._fitness_checks == []
    sdk_thresholds(1e9, 100.0)  # a machine it would refuse now: the SDK checks nothing again
    asyncio.run(rp_fitness.run_fitness_checks())  # would end this process (os._exit) on a failure
    assert rp_fitness._fitness_checks == []


def test_a_failing_network_check_fails_the_serve_stage(sdk_thresholds, monkeypatch) -> None:
    from runpod.serverless.modules import rp_system_fitness

    from runtime.errors import BootError

    async def unreachable() -> None:
        raise RuntimeError("Network connectivity failed: Timeout connecting to 8.8.8.8:53 (5s)")

    sdk_thresholds(0.0, 0.0)
    monkeypatch.setattr(rp_system_fitness, "_check_network_connectivity", unreachable)
    with pytest.raises(BootError, match="first job: Network connectivity failed: Timeout connecting "
                                        "to 8.8.8.8:53 \\(5s\\); the SDK requires a TCP connection"):
        JobSdk().check_machine()


def test_the_sdks_own_switch_turns_the_check_off(sdk_thresholds, monkeypatch) -> None:
    """RUNPOD_SKIP_AUTO_SYSTEM_CHECKS=true turns the SDK's checks off (a baked image whose weights
    fill most of its container disk): the worker's copy of them must not fail that boot."""
    from runpod.serverless.modules import rp_fitness

    sdk_thresholds(0.0, 100.0)  # a disk the SDK would refuse
    monkeypatch.setenv("RUNPOD_SKIP_AUTO_SYSTEM_CHECKS", "True")
    JobSdk().check_machine()
    assert not any("disk" in getattr(check, "__name__", "") for check in rp_fitness._fitness_checks)


# ---- StopWhenIdle: the queue worker's stop signals --------------------------------------------
# Each in a fresh interpreter: it installs signal handlers and ends its process with os._exit.
def run_script(body: str) -> subprocess.CompletedProcess[str]:
    script = textwrap.dedent("""
        import logging, multiprocessing, os, signal, sys, time
        from runtime.serve import StopWhenIdle
        logging.basicConfig(level=logging.INFO)
    """) + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=30)


def test_a_process_forked_after_install_still_ends_on_sigterm() -> None:
    """The SDK forks its heartbeat process while our handler is in. There the handler's thread
    does not exist: without its own way out the child ignored SIGTERM, and multiprocessing's
    terminate-then-join at exit (the SDK ending by itself) waited for it forever."""
    done = run_script("""
        StopWhenIdle(jobs_in_progress=lambda: 0).install()
        running = multiprocessing.Event()

        def heartbeat():
            running.set()
            time.sleep(60)

        child = multiprocessing.Process(target=heartbeat, daemon=True)  # forked, as the SDK's
        child.start()
        assert running.wait(10)  # past fork's own clean-up, which drops a signal pending then
        os.kill(child.pid, signal.SIGTERM)
        child.join(10)
        print("child exit", child.exitcode)
    """)
    assert done.returncode == 0, done.stderr
    assert "child exit 143" in done.stdout


def test_once_chained_a_sigterm_reaches_the_sdk_and_ends_the_process_when_its_job_is_done() -> None:
    """The SDK's own handler (it stops taking jobs) still runs; the process waits for the job in
    progress, then ends with 143 without waiting for anything else."""
    done = run_script("""
        jobs = [1]
        stop = StopWhenIdle(jobs_in_progress=lambda: jobs[0])
        stop.install()
        # What the SDK's JobScaler does before its loop first asks for its concurrency:
        signal.signal(signal.SIGTERM, lambda signum, frame: print("sdk handler", signum, flush=True))
        assert stop.concurrency_modifier(1) == 1 and stop.concurrency_modifier(1) == 1
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop._stopping.wait(5)
        time.sleep(0.5)  # ten of its polls: still here while the job runs
        print("alive during the job", flush=True)
        jobs[0] = 0  # the job's result is posted
        time.sleep(20)
        print("not ended", flush=True)
    """)
    assert done.returncode == 143, done.stderr
    assert done.stdout.splitlines() == [f"sdk handler {signal.SIGTERM.value}", "alive during the job"]
    assert "stopped by SIGTERM: taking no more jobs; exiting once the job in progress" in done.stderr
    assert "stopped by SIGTERM: the job in progress posted its result; exiting" in done.stderr


def test_where_job_takes_can_be_stopped_the_sdks_handler_is_not_run() -> None:
    """The SDK's handler stops its job runner too: a job that a job-take made before the signal
    brought back after it was queued and never run. So where ``stop_taking`` stops the job-takes
    (JobsInHand.close), the SDK's handler is left out, and the job in hand still runs."""
    done = run_script("""
        jobs, closed = [1], []
        stop = StopWhenIdle(jobs_in_progress=lambda: jobs[0],
                            stop_taking=lambda: closed.append(True) or True)
        stop.install()
        signal.signal(signal.SIGTERM, lambda signum, frame: print("sdk handler", flush=True))
        stop.concurrency_modifier(1)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop._stopping.wait(5)
        time.sleep(0.2)
        print("takes stopped", closed, flush=True)
        jobs[0] = 0
        time.sleep(20)
    """)
    assert done.returncode == 143, done.stderr
    assert done.stdout.splitlines() == ["takes stopped [True]"]
    assert "stopped by SIGTERM: the job in progress posted its result; exiting" in done.stderr


def test_a_job_count_that_cannot_be_read_leaves_the_shutdown_to_the_sdk() -> None:
    """The count is the SDK's internals (runpod 1.12's JobsProgress): where another version
    lacks it, ending at once could cut a job short, so the SDK's own shutdown is left to run."""
    done = run_script("""
        def unreadable():
            raise ImportError("no JobsProgress in this SDK")

        stop = StopWhenIdle(jobs_in_progress=unreadable)
        stop.install()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop._stopping.wait(5)
        stop._thread.join(5)
        print("still here", stop.exit_code, flush=True)
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["still here 143"]
    assert "cannot be read (ImportError: no JobsProgress in this SDK); leaving the shutdown to the SDK" in done.stderr

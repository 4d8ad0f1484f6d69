"""The serve stage's job SDK, imported on a side thread while the worker boots."""

from __future__ import annotations

import pytest

from runtime.serve import JobSdk

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
    """Sets the SDK's own start-up thresholds (read from the environment at its import)."""
    from runpod.serverless.modules import rp_system_fitness

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


def test_a_machine_the_sdk_accepts_passes(sdk_thresholds) -> None:
    sdk_thresholds(0.0, 0.0)
    JobSdk().check_machine()


def test_the_sdks_own_switch_turns_the_check_off(sdk_thresholds, monkeypatch) -> None:
    """RUNPOD_SKIP_AUTO_SYSTEM_CHECKS=true turns the SDK's checks off (a baked image whose weights
    fill most of its container disk): the worker's copy of them must not fail that boot."""
    from runpod.serverless.modules import rp_fitness

    sdk_thresholds(0.0, 100.0)  # a disk the SDK would refuse
    monkeypatch.setenv("RUNPOD_SKIP_AUTO_SYSTEM_CHECKS", "True")
    monkeypatch.setitem(rp_fitness._registration_state, "system_checks", False)
    rp_fitness._ensure_system_checks_registered()  # what the SDK does with the switch: no checks
    assert not any("disk" in getattr(check, "__name__", "") for check in rp_fitness._fitness_checks)
    JobSdk().check_machine()

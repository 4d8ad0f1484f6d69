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

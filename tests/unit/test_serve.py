"""The serve stage's job SDK, imported on a side thread while the worker boots."""

from __future__ import annotations

import pytest

from runtime.serve import JobSdk

pytestmark = pytest.mark.timeout(60)


def test_a_job_sdk_that_fails_to_import_fails_the_serve_stage_in_the_main_thread() -> None:
    """The SDK is imported on a side thread; its failure must still stop the boot (raised where
    the serve stage asks for it), not vanish with the thread."""
    class Missing(JobSdk):
        def _load(self):
            import visgate_no_such_job_sdk  # type: ignore[import-not-found]  # noqa: F401

    sdk = Missing()
    with pytest.raises(ModuleNotFoundError, match="visgate_no_such_job_sdk"):
        sdk.start_function()

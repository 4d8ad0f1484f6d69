"""Secrets are removed from every log record, also from libraries that log through handlers of
their own (diffusers, transformers) rather than the root logger's."""

from __future__ import annotations

import io
import logging

from runtime.errors import brief, redact
from runtime.logs import setup_logging

SECRET = "hf_TopSecretToken123"


def test_a_library_with_its_own_handler_is_redacted_too(restore_logging):
    setup_logging((SECRET,))
    library = logging.getLogger("diffusers.test_logs")
    library.propagate = False  # as diffusers and transformers configure their loggers
    library.setLevel(logging.INFO)  # other tests quiet the diffusers logger to ERROR
    stream = io.StringIO()
    library.addHandler(logging.StreamHandler(stream))
    library.warning("downloading with token %s", SECRET)
    try:
        raise RuntimeError(f"401 for {SECRET}")
    except RuntimeError:
        library.exception("failed")
    text = stream.getvalue()
    assert "downloading with token ***" in text and "401 for ***" in text
    assert SECRET not in text


def test_a_log_call_that_does_not_fit_its_format_never_raises_in_the_caller(restore_logging, capsys):
    # Redaction formats each record as it is created, outside logging's own error handling.
    setup_logging((SECRET,))
    logging.getLogger("somelib").warning("loaded %d shards of %s", "three", SECRET)
    err = capsys.readouterr().err
    assert "loaded %d shards of %s (unformattable log arguments: str, str)" in err
    assert SECRET not in err


def test_a_cut_message_never_keeps_part_of_a_secret(restore_logging):
    # The cut falls inside the token: redacting after it would no longer recognise the token and
    # the first half would be logged (and sent in the boot record).
    exc = OSError("x" * 180 + f" Authorization: Bearer {SECRET} rejected")
    assert SECRET[:8] in brief(exc, limit=215)  # what the cut alone leaves behind
    setup_logging((SECRET,))
    cut = brief(exc, limit=215)
    assert cut.startswith("OSError: " + "x" * 180) and "Bearer ***" in cut
    assert SECRET[:4] not in cut


def test_a_secret_holding_another_is_removed_whole():
    # HF_TOKEN inside a longer secret (a signed hub URL's query): replacing the token first would
    # leave the rest of the longer one, which then no longer matches.
    query = f"sig=Zm9vYmFy&token={SECRET}"
    for order in ((SECRET, query), (query, SECRET)):
        assert redact(f"GET /resolve?{query} failed", order) == "GET /resolve?*** failed"


def test_lines_logged_during_a_job_name_it_and_no_others_do(restore_logging, capsys):
    from runtime.logs import job_context

    setup_logging((SECRET,))
    log = logging.getLogger("runtime.handler")
    log.info("before")
    with job_context("sync-3f1c9a2e-u1"):
        log.warning("inside, token %s", SECRET)
        logging.getLogger("somelib.jobs").warning("a library's line")
        with job_context(None):  # a job without an id names none
            log.info("no id")
    with job_context("x" * 100 + "\n\x1b[2J"):  # cut, and no control characters into the log
        log.info("long id")
    log.info("after")
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].endswith(" INFO runtime.handler: before")
    assert lines[1].endswith(" WARNING runtime.handler [job sync-3f1c9a2e-u1]: inside, token ***")
    assert lines[2].endswith(" WARNING somelib.jobs [job sync-3f1c9a2e-u1]: a library's line")
    assert lines[3].endswith(" INFO runtime.handler: no id")
    assert lines[4].endswith(f" INFO runtime.handler [job {'x' * 64}]: long id")
    assert lines[5].endswith(" INFO runtime.handler: after")

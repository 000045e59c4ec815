"""A batch's exit code follows what the store recorded for each run, not only the job's
exit code: a Ray or Slurm retry of a job whose first attempt left the run ``failed`` in
the batch finds nothing to do and exits 0, yet the run was not verified (exit 3)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from auditor.cli.executors import exit_code_of
from auditor.executors.base import Outcome
from auditor.store.batches import BatchItem

ITEM = BatchItem(run_id="r1", shard=0, state="done", verdict="reproduced-bitwise",
                 exit_code=0, node=None, gpu=None, worker="w", started_at=None,
                 seconds=1.0, rerun_id=None, certificate_sha256=None, reports=(),
                 message="")


def outcome(code: int) -> Outcome:
    return Outcome("r1", code, "x", None, 1, "", 1.0)


@pytest.mark.parametrize(("job", "item", "expected"), [
    (0, None, 0), (1, None, 1), (2, None, 2), (130, None, 3), (127, None, 3),
    # the retry found its run failed in this batch: nothing verified
    (0, replace(ITEM, state="failed", verdict="could-not-verify", exit_code=3), 3),
    (0, replace(ITEM, state="failed", verdict=None, exit_code=None), 3),
    # the store's verdict wins over the job's code for a done run
    (0, replace(ITEM, verdict="not-reproduced", exit_code=1), 1),
    (1, ITEM, 0),
    (3, ITEM, 3),
    # another worker held it or it was verified already: skipped, nothing wrong
    (0, replace(ITEM, state="skipped", exit_code=None), 0),
    (1, replace(ITEM, state="running", exit_code=None), 1),
])
def test_exit_code_of_reconciles_the_job_with_the_store(job: int, item: BatchItem | None,
                                                        expected: int) -> None:
    assert exit_code_of(outcome(job), item) == expected

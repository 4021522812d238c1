"""How many tasks a worker asks for, and when."""

from __future__ import annotations

from worker_hooks.worker.leasing import (
    BATCH_WINDOW_S,
    BUSY_BATCH_WINDOW_S,
    REPORT_WAIT_S,
    SHORT_AHEAD,
    SHORT_TASK_S,
    Holding,
)


def test_a_worker_holds_its_slots_and_the_prefetch_until_tasks_prove_short() -> None:
    new = Holding(slots=2, prefetch=1, held=0)
    assert new.to_lease() == 3  # nothing measured yet
    slow = Holding(slots=2, prefetch=1, held=0, task_s=1.0)
    assert slow.to_lease() == 3
    short = Holding(slots=2, prefetch=1, held=0, task_s=SHORT_TASK_S / 2)
    assert short.to_lease() == 2 + 2 * SHORT_AHEAD  # a round trip costs more than a task


def test_the_lease_loop_refills_short_tasks_only_once_half_of_those_ahead_started() -> None:
    ahead = SHORT_AHEAD

    def short(held: int) -> Holding:
        return Holding(slots=1, prefetch=0, held=held, task_s=0.001)

    assert short(1 + ahead // 2 + 1).to_lease() == 0  # wait: many still in hand
    assert short(1 + ahead // 2).to_lease() == ahead // 2  # one request brings several


def test_completions_about_to_be_sent_do_the_asking_unless_they_are_held_up() -> None:
    waiting = Holding(slots=4, prefetch=0, held=2, unreported=2, task_s=1.0)
    assert waiting.to_lease() == 0  # the lease loop leaves it to them
    assert waiting.wanted() == 2  # they ask for the slots they free
    stuck = Holding(slots=4, prefetch=0, held=2, unreported=2, unreported_for_s=REPORT_WAIT_S)
    assert stuck.to_lease() == 2  # a segment write that hangs keeps no slot idle
    short = Holding(slots=1, prefetch=0, held=1, unreported=3, task_s=SHORT_TASK_S / 10)
    assert short.to_lease() == SHORT_AHEAD  # many to a batch: the slot must not run dry


def test_tasks_asked_for_in_flight_are_not_asked_for_twice() -> None:
    holding = Holding(slots=4, prefetch=1, held=1, asking=3, task_s=1.0)
    assert holding.wanted() == 1 and holding.to_lease() == 1
    assert Holding(slots=4, prefetch=1, held=1, asking=9).wanted() == 0  # never negative


def test_a_draining_worker_asks_for_nothing() -> None:
    draining = Holding(slots=4, prefetch=1, held=0, draining=True)
    assert draining.wanted() == 0 and draining.to_lease() == 0


def test_completions_wait_longer_for_company_only_while_short_tasks_keep_coming() -> None:
    busy = Holding(slots=1, prefetch=0, held=3, task_s=SHORT_TASK_S / 2)
    assert busy.report_window_s() == BUSY_BATCH_WINDOW_S
    slow = Holding(slots=1, prefetch=0, held=3, task_s=1.0)
    assert slow.report_window_s() == BATCH_WINDOW_S  # the next completion is far off
    idle = Holding(slots=1, prefetch=0, held=0, task_s=SHORT_TASK_S / 2)
    assert idle.report_window_s() == BATCH_WINDOW_S  # nothing more is coming
    assert BATCH_WINDOW_S < BUSY_BATCH_WINDOW_S < REPORT_WAIT_S


def test_a_task_in_its_stage_out_frees_its_slot_and_its_completion_will_ask() -> None:
    uploading = Holding(slots=2, prefetch=0, held=1, staging_out=1, task_s=1.0)
    assert uploading.wanted() == 1  # its slot is free: the completion asks for a task
    assert uploading.to_lease() == 0  # the lease loop leaves that to the completion
    short = Holding(slots=2, prefetch=0, held=1, staging_out=1, task_s=SHORT_TASK_S / 10)
    assert short.to_lease() == 1 + 2 * SHORT_AHEAD  # the slot must not run dry meanwhile

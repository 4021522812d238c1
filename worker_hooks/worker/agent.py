"""``stager worker``: the node agent that pulls tasks and runs them through the wrapper.

It only connects out (works behind NAT). Threads, each with one job:

- the *leaser* keeps ``slots + prefetch`` tasks in hand (long-polling the
  dispatcher; :mod:`~worker_hooks.worker.leasing` decides how many and
  when) and starts staging the inputs of tasks that must wait for a slot
  (prefetch: the node cache's single flight lets the later stage-in share
  that fetch);
- ``slots`` *runners* stage in and run tasks
  (:func:`~worker_hooks.wrap.wrapper.start_task`), and hand each to a
  *stage-out* thread (``slots`` of them), which makes its outputs durable and
  hands the outcome to the reporter. A runner takes its next task meanwhile:
  one task's uploads overlap the next one's command. A task in its stage-out
  holds no slot; a runner waits while every stage-out thread is busy;
- the *reporter* writes the results of a batch of completions in one
  segment, then reports them with their leases' attempt numbers (fencing),
  asking in the same request for tasks for the slots they freed;
- the *heartbeater* extends the leases in hand, drops those the dispatcher
  says are stale, and reports what the node cache gained and lost.

Drain (SIGTERM, a spot interruption notice): stop leasing, hand back every
task not started, let running ones finish for ``drain_s``, then stop them
and hand them back too; then exit. A worker killed outright (kill -9) loses
its leases by expiry; the dispatcher re-queues them.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from fsd.cache import digest_of_entry
from fsd.outbox import Outbox, OutboxItem
from fsd.peerclient import PeerClient
from fsd.stagein import Peers, Tier, warm
from stager.digest import Digest
from stager.errors import (
    AccessDeniedError,
    CommandFailedError,
    ConfigError,
    MissingOutputError,
    NotFoundError,
    PreconditionFailedError,
    StagerError,
    TaskCancelledError,
    TaskError,
    TaskTimeoutError,
    UnreachableError,
)
from stager.locations import S3Url
from worker_hooks.dispatch.client import DispatcherClient
from worker_hooks.task.protocol import (
    CacheReport,
    Completion,
    HeartbeatRequest,
    Held,
    InputUse,
    Lease,
    Written,
)
from worker_hooks.task.result import Persist, ResultManifest
from worker_hooks.worker.leasing import REPORT_WAIT_S, Holding
from worker_hooks.worker.settings import WorkerSettings
from worker_hooks.worker.spot import SpotWatcher
from worker_hooks.wrap.memo import write_segment
from worker_hooks.wrap.node import Node
from worker_hooks.wrap.sandboxes import SandboxPool
from worker_hooks.wrap.stageout import NodeKeeping
from worker_hooks.wrap.wrapper import Ran, WrapOptions, WrapResult, stage_inputs, start_task

# The task's own fault or its spec's: running it elsewhere would not help.
PERMANENT_ERRORS = (
    CommandFailedError,
    MissingOutputError,
    TaskTimeoutError,
    ConfigError,
    NotFoundError,
    AccessDeniedError,
)


T = TypeVar("T")

EVACUATE_S = 30.0  # of a spot notice's two minutes, kept to send local outputs to S3


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class _Held:
    lease: Lease
    cancel: threading.Event = field(default_factory=threading.Event)
    started: bool = False
    prefetch: Future[dict[Digest, Tier]] | None = None

    @property
    def task_id(self) -> str:
        return self.lease.task_id

    @property
    def attempt(self) -> int:
        return self.lease.attempt

    def prefetched(self) -> dict[Digest, Tier]:
        """Where this task's prefetch fetched inputs from (S3, a peer, the NFS head), by
        digest; cache hits are not listed (waits for the prefetch to end).

        A prefetch that failed read nothing the run did not read again.
        """
        if self.prefetch is None or self.prefetch.cancelled() or self.prefetch.exception():
            return {}
        return self.prefetch.result()


@dataclass(frozen=True)
class ServiceLink:
    """This node's file service (:mod:`fsd.service`), as the worker uses it.

    The worker advertises ``address`` with every lease request, fetches
    inputs from peers and mirrors outputs with ``client``, queues its own
    ``mirror`` outputs in ``outbox``, and reports what the service wrote
    behind (``written``, filled by its writer) with its heartbeats.
    """

    address: str
    client: PeerClient
    outbox: Outbox
    written: queue.SimpleQueue[Written] = field(default_factory=queue.SimpleQueue)
    wake_writer: Callable[[], None] = lambda: None  # write the outbox's due rows now
    start_writing: Callable[[], None] = lambda: None  # once the dispatcher has answered


BATCH_MAX = 64  # completions in one request at most


@dataclass(frozen=True)
class _Pending:
    """A completion waiting to be reported, with what to do once it is accepted."""

    item: _Held
    completion: Completion
    accepted: Callable[[], None]
    unrecorded: bool  # its result goes into a segment before it is reported


@dataclass
class WorkerReport:
    done: int = 0
    failed: int = 0
    handed_back: int = 0
    stale: int = 0


class Worker:
    def __init__(
        self,
        client: DispatcherClient,
        node: Node,
        settings: WorkerSettings,
        *,
        worker_id: str | None = None,
        pass_env: tuple[str, ...] = (),
        service: ServiceLink | None = None,
        spot: SpotWatcher | None = None,
        log: Callable[[str], None] = lambda line: None,
    ) -> None:
        self.client = client
        self.service = service
        self.spot = spot
        self._kept_local: list[OutboxItem] = []  # this node's `local` outputs (to evacuate)
        if node.sandbox_pool is None:  # thousands of short tasks: reuse their sandboxes
            # One per slot, and one per stage-out thread (a task's until its outputs left).
            node = dataclasses.replace(
                node, sandbox_pool=SandboxPool(node.sandbox_dir, 2 * settings.slots)
            )
        self.node = node
        self.settings = settings
        self.worker_id = worker_id or default_worker_id()
        self.pass_env = pass_env
        self.log = log
        self.report = WorkerReport()
        self._held: dict[str, _Held] = {}
        self._lock = threading.Lock()
        self._ready: queue.Queue[_Held] = queue.Queue()
        self._room = threading.Condition(self._lock)
        self._draining = threading.Event()
        self._finished = threading.Event()
        self._fatal: StagerError | None = None
        self._reported_cache: set[Digest] = set()
        self._report_all = False  # send the whole cache with the next heartbeat
        self._lease_s = settings.heartbeat_s * 3
        self._extended_at = 0.0  # when a lease request or completions last extended the leases
        self._task_s: float | None = None  # tasks' time here, to their stage-out's end (an average)
        self._asking = 0  # tasks asked for by a request in flight (lease or completions)
        self._environ = dict(os.environ)  # what tasks' variables are taken from
        # When each completion not sent yet was made (oldest first): their request asks.
        self._unreported: collections.deque[float] = collections.deque()
        self._prefetcher = ThreadPoolExecutor(max_workers=2, thread_name_prefix="prefetch")
        # Stage-outs: as many threads as slots; a runner waits for a free one.
        self._stage_outs = ThreadPoolExecutor(settings.slots, thread_name_prefix="stage-out")
        self._stage_out_free = threading.Semaphore(settings.slots)
        self._staging_out = 0  # tasks held whose command has ended (in _held still)
        # Completions waiting to be reported, each with what to do once it is accepted:
        # the reporter sends them in batches, so a runner never waits for the dispatcher.
        self._completions: queue.Queue[_Pending] = queue.Queue()
        self._runners_done = threading.Event()

    # -- the whole life -------------------------------------------------------------

    def run(
        self, stop: threading.Event, signalled: Callable[[], bool] = lambda: False
    ) -> WorkerReport:
        """Work until ``stop`` is set or ``signalled()`` (then drain), or the dispatcher is lost.

        ``signalled`` is polled, so a signal handler need only record the
        signal: setting an Event from a handler can deadlock on its lock.
        """
        self._stop = stop
        self.node.tidy(lambda line: self.log(f"worker {self.worker_id}: {line}"))
        first_report = self._first_cache_report()
        threads = [self._thread(lambda: self._lease_loop(first_report), "leaser")]
        threads += [self._thread(self._run_loop, f"runner-{n}") for n in range(self.settings.slots)]
        beat = self._thread(self._heartbeat_loop, "heartbeat")
        reporter = self._thread(self._report_loop, "reporter")
        for thread in [*threads, beat, reporter]:
            thread.start()
        if self.spot is not None:
            self.spot.start()
        noticed = self.spot.noticed if self.spot is not None else threading.Event()
        while not stop.wait(0.2) and not signalled() and not noticed.is_set():
            pass
        notice = self.spot.notice if self.spot is not None else None
        drain_s = self.settings.drain_s
        if notice is not None:
            drain_s = min(drain_s, max(0.0, notice.deadline - time.time() - EVACUATE_S))
            self.log(f"worker {self.worker_id}: spot interruption notice ({notice.action})")
        self._drain(threads, drain_s)
        self._runners_done.set()  # the reporter sends what is left, then ends
        reporter.join(timeout=self.settings.dispatcher_lost_s + 5)
        self._finished.set()
        beat.join(timeout=5)
        if notice is not None:
            self._evacuate(notice.deadline - 5.0)
        self._prefetcher.shutdown(wait=False, cancel_futures=True)
        if self.node.sandbox_pool is not None and not any(t.is_alive() for t in threads):
            self.node.sandbox_pool.close()
        if self._fatal is not None:
            raise self._fatal
        return self.report

    def _thread(self, target: Callable[[], None], name: str) -> threading.Thread:
        """A daemon thread whose unexpected death stops the worker (and says why)."""

        def guarded() -> None:
            try:
                target()
            except Exception as exc:
                self._give_up(StagerError(f"{name} thread failed: {exc!r}"))

        return threading.Thread(target=guarded, name=name, daemon=True)

    def _drain(self, threads: list[threading.Thread], drain_s: float) -> None:
        self._draining.set()
        with self._room:
            self._room.notify_all()
        self.log(f"worker {self.worker_id}: draining")
        while True:
            try:
                item = self._ready.get_nowait()
            except queue.Empty:
                break
            self._hand_back(item)
        deadline = time.monotonic() + drain_s
        for thread in threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        with self._lock:
            running = list(self._held.values())
        for item in running:
            item.cancel.set()  # the runner hands it back once its command is stopped
        for thread in threads:
            thread.join(timeout=self.node.kill_grace_s + 30)
        self._stage_outs.shutdown(wait=True)  # their outputs go out; retries are bounded

    # -- leasing ----------------------------------------------------------------------

    def _lease_loop(self, first_report: CacheReport) -> None:
        first = True
        lost_since: float | None = None
        while not self._draining.is_set():
            with self._room:
                want = self._holding().to_lease()
                if want <= 0:
                    self._room.wait(timeout=REPORT_WAIT_S if self._unreported else 1.0)
                    continue
                held = self._held_now()
                self._asking += want
            try:
                asked = time.monotonic()
                reply = self.client.lease(
                    self.worker_id,
                    want,
                    wait_s=1.0 if held else self.settings.lease_wait_s,
                    cache=first_report if first else None,
                    address=self.service.address if self.service else None,
                    held=held,
                )
                first, lost_since = False, None
                self._lease_s = reply.lease_s
                self._extended(asked, held, reply.drop, reply.beat_now)
            except UnreachableError as exc:
                lost_since = lost_since or time.monotonic()
                if time.monotonic() - lost_since > self.settings.dispatcher_lost_s:
                    self._give_up(exc)
                    return
                self._draining.wait(1.0)
                continue
            except StagerError as exc:
                self._give_up(exc)
                return
            finally:
                with self._room:
                    self._asking -= want
            for lease in reply.leases:
                self._accept(_Held(lease))

    def _holding(self) -> Holding:
        """What this worker holds and has asked for (the caller holds the lock)."""
        return Holding(
            slots=self.settings.slots,
            prefetch=self.settings.prefetch,
            held=len(self._held) - self._staging_out,
            staging_out=self._staging_out,
            asking=self._asking,
            unreported=len(self._unreported),
            unreported_for_s=time.monotonic() - self._unreported[0] if self._unreported else 0.0,
            task_s=self._task_s,
            draining=self._draining.is_set(),
        )

    def _held_now(self) -> tuple[Held, ...]:
        """The leases in hand (the caller holds the lock)."""
        return tuple(Held(h.task_id, h.attempt) for h in self._held.values())

    def _extended(
        self, asked: float, held: Sequence[Held], drop: Sequence[str], beat_now: bool
    ) -> None:
        """A request that carried the leases in hand was answered: they were extended as
        of ``asked`` (a heartbeat may wait), except those to ``drop``."""
        if held:
            self._extended_at = max(self._extended_at, asked)
        if beat_now:  # taken as lost: only a heartbeat takes it back
            self._extended_at = 0.0
        with self._lock:
            for task_id in drop:
                if task_id in self._held:
                    self._held[task_id].cancel.set()

    def _give_up(self, exc: StagerError) -> None:
        self.log(f"worker {self.worker_id}: giving up: {exc.one_line()}")
        self._fatal = exc
        self._stop.set()

    def _accept(self, item: _Held) -> None:
        with self._lock:
            self._held[item.task_id] = item
            running = sum(h.started for h in self._held.values()) - self._staging_out
            idle_slots = self.settings.slots - running
            waiting = self._ready.qsize()
        if self._draining.is_set():
            self._hand_back(item)
            return
        if waiting >= idle_slots:
            item.prefetch = self._prefetcher.submit(self._prefetch, item)
        self._ready.put(item)

    def _peers(self, lease: Lease) -> Peers | None:
        if self.service is None:
            return None
        return Peers(self.service.client, {r.digest: r.addresses for r in lease.peers})

    def _prefetch(self, item: _Held) -> dict[Digest, Tier]:
        try:
            inputs = stage_inputs(item.lease.spec, self.node.store)
            warmed = warm(
                inputs,
                cache=self.node.cache,
                store=self.node.store,
                peers=self._peers(item.lease),
                workers=4,
            )
        except StagerError:  # the run meets and reports any error
            return {}
        return {digest_of_entry(entry): tier for _, entry, tier in warmed if tier is not Tier.LOCAL}

    # -- running ----------------------------------------------------------------------

    def _run_loop(self) -> None:
        while not self._draining.is_set():
            try:
                item = self._ready.get(timeout=0.2)
            except queue.Empty:
                continue
            if self._draining.is_set() or item.cancel.is_set():
                self._hand_back(item)
                continue
            item.started = True
            if item.prefetch is not None:
                item.prefetch.cancel()  # not begun yet: the stage-in does the work
            started = time.monotonic()
            start = functools.partial(start_task, item.lease.spec, self.node, self._options(item))
            ran = self._attempt(item, start)
            if ran is None:
                self._ended(item, started)
                continue
            with self._room:
                self._staging_out += 1
                self._room.notify_all()
            self._stage_out_free.acquire()
            self._stage_outs.submit(self._stage_out, item, ran, started)

    def _ended(self, item: _Held, started: float, *, staged_out: bool = False) -> None:
        """``item`` is no longer held; it took (from its slot to its end) since ``started``."""
        took = time.monotonic() - started
        with self._room:
            self._task_s = took if self._task_s is None else 0.8 * self._task_s + 0.2 * took
            self._staging_out -= staged_out
            self._held.pop(item.task_id, None)
            self._room.notify_all()

    def _options(self, item: _Held) -> WrapOptions:
        keeping = None
        if self.service is not None:
            link = self.service
            keeping = NodeKeeping(link.client, item.lease.mirror_to, link.outbox)
        return WrapOptions(
            cancel=item.cancel,
            pass_env=self.pass_env,
            peers=self._peers(item.lease),
            keeping=keeping,
            generation=f"{item.task_id}/{item.attempt}",
            recorded=self._recorded_for(item.lease),
            commit=False,  # the reporter writes the results in segments
            cache_s3_outputs=item.lease.outputs_read,
            environ=self._environ,
        )

    def _stage_out(self, item: _Held, ran: Ran, started: float) -> None:
        """On a stage-out thread: finish ``item``, report it, and free its thread."""
        try:
            result = self._attempt(item, ran.finish)
            if result is not None:
                self._report_done(item, result, time.monotonic() - started)
        except Exception as exc:  # as a dead thread would: stop the worker, say why
            self._give_up(StagerError(f"stage-out thread failed: {exc!r}"))
        finally:
            self._ended(item, started, staged_out=True)
            self._stage_out_free.release()

    def _attempt(self, item: _Held, step: Callable[[], T]) -> T | None:
        """``step``'s value; None once its failure was reported (or the task handed back)."""
        try:
            return step()
        except TaskCancelledError:
            self._hand_back(item)
        except StagerError as exc:
            logs = exc.logs if isinstance(exc, TaskError) else ()
            retry = not isinstance(exc, PERMANENT_ERRORS)
            self._report_failure(item, exc.one_line(), retry=retry, logs=logs)
        except Exception as exc:  # a bug of ours: let another attempt try, and say so
            self._report_failure(item, f"internal error: {exc!r}", retry=True)
        return None

    def _recorded_for(self, lease: Lease) -> Callable[[str], ResultManifest | None]:
        """Memo lookups for a task: the lease's answer when it holds the key, else the
        dispatcher's (never S3: the dispatcher knows every result)."""

        def recorded(key: str) -> ResultManifest | None:
            if key == lease.memo_key:
                return lease.memo
            return self.client.recorded([key]).get(key)

        return recorded

    def _report_done(self, item: _Held, result: WrapResult, seconds: float) -> None:
        # An input the prefetch fetched reached the stage-in as a cache hit; it came from
        # where the prefetch got it (S3, a peer).
        prefetched = item.prefetched()
        tiers = [
            prefetched.get(s.digest, s.tier) if s.tier is Tier.LOCAL else s.tier
            for s in result.staged
        ]
        uses = [
            InputUse(s.digest, s.size, from_cache=tier is not Tier.S3, from_peer=tier is Tier.PEER)
            for s, tier in zip(result.staged, tiers, strict=True)
        ]

        completion = Completion(
            item.task_id,
            item.attempt,
            result.manifest,
            tuple(uses),
            result.memoized,
            cached_outputs=item.lease.outputs_read and not result.memoized,
        )

        def accepted() -> None:
            # The dispatcher now lists these on this worker: count them as told,
            # so a later heartbeat reports them removed once they are evicted.
            told = completion.held()
            local = [
                OutboxItem(
                    0,
                    r.digest,
                    r.size,
                    r.url,
                    result.manifest.task_key,
                    f"{item.task_id}/{item.attempt}",
                )
                for r in result.manifest.outputs
                if r.kept is Persist.LOCAL
            ]
            with self._lock:
                self._reported_cache |= told
                self._kept_local.extend(local)
            self.report.done += 1
            how = "memoized" if result.memoized else f"in {seconds:.2f} s"
            self.log(f"worker {self.worker_id}: {item.task_id} done {how}")

        with self._lock:
            self._unreported.append(time.monotonic())
        self._completions.put(_Pending(item, completion, accepted, not result.memoized))

    def _report_loop(self) -> None:
        """Send completions in batches: whatever is waiting, plus what arrives within
        the window (:meth:`Holding.report_window_s`), up to :data:`BATCH_MAX`; at once
        when nothing more is held. Ends once the runners have ended and nothing is left."""
        while True:
            try:
                batch = [self._completions.get(timeout=0.2)]
            except queue.Empty:
                if self._runners_done.is_set():
                    return
                continue
            with self._lock:
                deadline = time.monotonic() + self._holding().report_window_s()
            while len(batch) < BATCH_MAX:
                left = deadline - time.monotonic()
                try:
                    batch.append(self._completions.get(timeout=max(0.0, min(left, 0.01))))
                    continue
                except queue.Empty:
                    pass
                with self._lock:
                    idle = not self._held
                if left <= 0 or idle:
                    break
            self._send_completions(batch)

    def _record(self, batch: list[_Pending]) -> list[_Pending]:
        """Write one result segment per results prefix for the batch's new results
        (their outputs are durable already); fail the tasks whose segment could
        not be written. What may be reported now."""
        groups: dict[S3Url, list[_Pending]] = {}
        for pending in batch:
            if pending.unrecorded:
                groups.setdefault(pending.item.lease.spec.results_prefix, []).append(pending)
        ready = [pending for pending in batch if not pending.unrecorded]
        for prefix, group in groups.items():
            results = [pending.completion.result for pending in group]
            try:
                write_segment(self.node.store, prefix, self.worker_id, results)
            except StagerError as exc:
                for pending in group:
                    self._report_failure(pending.item, exc.one_line(), retry=True)
                continue
            ready += group
        return ready

    def _send_completions(self, batch: list[_Pending]) -> None:
        """Record and report a batch; the same request leases tasks for the free slots."""
        try:
            self._report(self._record(batch))
        finally:
            with self._room:
                for _ in batch:  # the oldest: the queue hands completions out in order
                    self._unreported.popleft()
                self._room.notify_all()  # the lease loop asks, if this request did not

    def _report(self, batch: list[_Pending]) -> None:
        if not batch:
            return

        def send() -> None:
            completions = [pending.completion for pending in batch]
            with self._lock:
                held = self._held_now()
                want = self._holding().wanted()
                self._asking += want
            asked = time.monotonic()
            try:
                reply = self.client.complete_many(self.worker_id, completions, held=held, want=want)
            finally:
                with self._lock:
                    self._asking -= want
            self._extended(asked, held, reply.drop, reply.beat_now)
            for lease in reply.leases:
                self._accept(_Held(lease))
            refused = set(reply.stale)
            for pending in batch:
                if pending.item.task_id in refused:
                    self.report.stale += 1
                    self.log(
                        f"worker {self.worker_id}: {pending.item.task_id}"
                        f" attempt {pending.item.attempt} is stale"
                    )
                else:
                    pending.accepted()

        self._deliver(batch[0].item, send)

    def _report_failure(
        self, item: _Held, error: str, *, retry: bool, logs: Sequence[S3Url] = ()
    ) -> None:
        # The peers that failed this attempt, told now: the next lease must not offer them.
        bad = self.service.client.take_bad() if self.service is not None else []

        def send() -> None:
            self.client.fail(
                item.task_id,
                item.attempt,
                self.worker_id,
                error,
                retry=retry,
                bad_peers=bad,
                logs=logs,
            )

        if self._deliver(item, send):
            self.report.failed += 1
            self.log(f"worker {self.worker_id}: {item.task_id} failed: {error}")

    def _deliver(self, item: _Held, send: Callable[[], None]) -> bool:
        """Send an outcome, retrying while the dispatcher is unreachable (bounded)."""
        deadline = time.monotonic() + self.settings.dispatcher_lost_s
        while True:
            try:
                send()
                return True
            except PreconditionFailedError:
                self.report.stale += 1
                self.log(f"worker {self.worker_id}: {item.task_id} attempt {item.attempt} is stale")
                return False
            except UnreachableError as exc:
                if time.monotonic() > deadline:
                    self.log(f"worker {self.worker_id}: cannot report {item.task_id}: {exc}")
                    return False
                time.sleep(1.0)

    def _hand_back(self, item: _Held) -> None:
        with self._room:
            self._held.pop(item.task_id, None)
            self._room.notify_all()
        with contextlib.suppress(StagerError):
            self.client.release(item.task_id, item.attempt, self.worker_id)
            self.report.handed_back += 1
            self.log(f"worker {self.worker_id}: handed back {item.task_id}")

    # -- heartbeats -------------------------------------------------------------------

    def _first_cache_report(self) -> CacheReport:
        """Everything the cache holds, for the first contact (before the other threads)."""
        self._reported_cache, _ = self.node.cache.holdings()
        return CacheReport(full=True, added=tuple(sorted(self._reported_cache)))

    def _no_service_news(self) -> bool:
        return self.service is None or (
            self.service.written.empty() and not self.service.client.has_bad()
        )

    def _service_news(self) -> tuple[list[str], list[Written]]:
        """Peers that failed this node, and outputs its file service wrote behind."""
        if self.service is None:
            return [], []
        written = []
        while not self.service.written.empty():
            written.append(self.service.written.get())
        return self.service.client.take_bad(), written

    def _heartbeat_loop(self) -> None:
        last = time.monotonic()
        while not self._finished.wait(0.25):
            # Three beats per lease, so one lost request does not cost the lease.
            every = min(self.settings.heartbeat_s, self._lease_s / 3)
            if time.monotonic() - last < every:
                continue
            last = time.monotonic()
            # A busy worker's lease requests and completions extend its leases: a beat
            # is then sent only when it has news (its cache, its file service's).
            self._beat(quiet=time.monotonic() - self._extended_at < every)

    def _beat(self, *, quiet: bool = False) -> None:
        """One heartbeat: leases held, what the cache gained and lost, the service's news.
        ``quiet``: skipped when there is no news."""
        current, cache_bytes = self.node.cache.holdings()
        with self._lock:
            held = list(self._held_now())
            added, removed = current - self._reported_cache, self._reported_cache - current
        delta = CacheReport(added=tuple(sorted(added)), removed=tuple(sorted(removed)))
        if self._report_all:  # the dispatcher had taken this node as lost
            delta = CacheReport(full=True, added=tuple(sorted(current)))
            added, removed = current, self._reported_cache - current
        if quiet and not (added or removed or self._report_all) and self._no_service_news():
            return
        bad, written = self._service_news()
        request = HeartbeatRequest(
            self.worker_id, tuple(held), cache_bytes, delta, tuple(bad), tuple(written)
        )
        try:
            reply = self.client.heartbeat(request)
        except StagerError as exc:  # the delta is sent again with the next beat
            self.log(f"worker {self.worker_id}: heartbeat failed: {exc.one_line()}")
            if self.service is not None:  # and so are the writes behind
                for item in written:
                    self.service.written.put(item)
            return
        self._report_all = reply.report_all
        if self.service is not None:
            if reply.report_all:  # taken as lost: recovery planned its outputs without us
                dropped = self.service.outbox.abandon()
                self.log(f"worker {self.worker_id}: was taken as lost; {dropped} writes dropped")
            self.service.start_writing()
        with self._lock:  # apply what was sent: completions may have told more meanwhile
            self._reported_cache = (self._reported_cache - removed) | added
            for task_id in reply.drop:
                if task_id in self._held:
                    self._held[task_id].cancel.set()

    # -- a spot interruption --------------------------------------------------------

    def _evacuate(self, deadline: float) -> None:
        """Before the node goes: its `local` outputs and its outbox to S3, by ``deadline``.

        The dispatcher hears of each write with a last heartbeat, so what
        reached S3 is not recomputed when the node is found lost.
        """
        if self.service is None:
            return
        outbox = self.service.outbox
        for item in self._kept_local:
            outbox.add(item.digest, item.size, item.url, item.task, generation=item.generation)
        outbox.hurry()
        self.service.start_writing()
        self.service.wake_writer()
        while outbox.counts().pending and time.time() < deadline:
            time.sleep(0.1)
        left = outbox.counts().pending
        self.log(
            f"worker {self.worker_id}: sent {len(self._kept_local)} local outputs and the outbox"
            f" to S3 before the interruption" + (f"; {left} not in time" if left else "")
        )
        self._beat()

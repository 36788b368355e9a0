"""The notifier: takes due delivery rows, renders them, sends them over one connection, records how
each ended. It runs apart from the handlers, so a slow or dead mail server only delays mail:

- its own thread with its own asyncio loop (``start``/``stop``), started by ``chute serve``,
  ``chute worker`` and ``chute notifier``; the worker's consumer never waits on it, and the only thing
  the two share is the database (the job service's hook inserts rows in the job's own transaction and,
  after commit, wakes the notifier so mail goes out at once instead of at the next poll);
- one SMTP connection per pass, reused for batch after batch while rows keep coming, closed (QUIT)
  when there is nothing left to send: no idle connection is held;
- a server that cannot be reached costs no attempt: the claimed rows are released and the notifier
  waits (0.5 s doubling to ``reconnect_max``) before it tries again; emails stay ``pending`` however
  long the outage lasts;
- per batch: render every message, then per message: MAIL FROM, with "DATA started" and the
  previous message's outcome committed (one transaction) while the server answers; RCPT TO; DATA.
  The mark is always committed before the DATA command is written. See
  ``deliveries.py`` for why that makes a crash safe, and ``smtp.py`` for which failures are retried,
  failed or uncertain.
- every few seconds it looks for claims whose notifier died (``DeliveryStore.recover``); any number
  of notifiers can run against one database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

from chute import telemetry
from chute.jobs import worker_id
from chute.models import utcnow
from chute.notify.deliveries import DeliveryStore, Outbound, Outcome, Recorder
from chute.notify.message import Mail, UnsendableAddress, compose
from chute.notify.smtp import ConnectFailed, SendError, Transport
from chute.notify.templates import TemplateProblem, Templates

log = logging.getLogger("chute.notify")


@dataclass
class Tally:
    """What one pass did (and, summed, what a notifier has done)."""

    claimed: int = 0
    sent: int = 0
    retry: int = 0
    failed: int = 0
    uncertain: int = 0
    released: int = 0
    unreachable: str | None = None

    def add(self, other: Tally) -> None:
        for f in fields(self):
            if f.name != "unreachable":
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


class Notifier:
    """Sends the due delivery rows of one database; ``start()`` runs it in its own thread, ``run_once()``
    is one pass (the testing kit and the tests drive it that way)."""

    def __init__(self, store: DeliveryStore, templates: Templates, transport: Callable[[], Transport], *,
                 mail_from: str, batch: int = 100, poll: float = 0.5, reconnect_max: float = 30.0,
                 recover_every: float = 5.0, describe: str = "", owner: str | None = None) -> None:
        self.store, self.templates, self.transport = store, templates, transport
        self.mail_from = mail_from
        self.batch, self.poll = batch, poll
        self.reconnect_max, self.recover_every = reconnect_max, recover_every
        self.describe = describe
        self.owner = owner or worker_id()
        self.totals = Tally()
        self.ready = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        #: claimed rows not yet marked "DATA started": given back if we are cancelled
        self._unsent: dict[int, None] = {}
        #: outcomes not yet recorded (they ride along with the next "DATA started" commit)
        self._done: list[Outcome] = []
        self._down_for = 0.0
        self._down_until = 0.0
        self._renewed = time.monotonic()

    # --- running in its own thread ----------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._thread_main, name="chute-notifier", daemon=True)
        self._thread.start()
        self.ready.wait(10)

    def stop(self, grace: float = 5.0) -> None:
        """Finish the message in hand, give the rest of the batch back, close the connection. A server
        that keeps us waiting longer than ``grace`` is cut off: what never reached DATA is given back
        at once, a message cut off after DATA is left to ``recover`` (it becomes uncertain)."""
        self._stopping.set()
        self.wake()
        if self._thread is None:
            return
        self._thread.join(grace)
        if self._thread.is_alive() and self._loop is not None and self._task is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._task.cancel)
            self._thread.join(10)
        if self._thread.is_alive():
            log.warning("the notifier did not stop; its claims are recovered after their lease")

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wake(self) -> None:
        """From any thread: look for due mail now rather than at the next poll."""
        loop, wakeup = self._loop, self._wakeup
        if loop is not None and wakeup is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed
                loop.call_soon_threadsafe(wakeup.set)

    def _thread_main(self) -> None:
        async def main() -> None:
            self._task = asyncio.current_task()
            await self.run_forever()

        try:
            asyncio.run(main())
        except asyncio.CancelledError:
            log.warning("the notifier was cut off while the mail server kept it waiting")
        except Exception:
            log.exception("the notifier thread died; unsent mail stays pending for the next notifier")

    async def run_forever(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self.ready.set()
        log.info("notifier %s sending through %s", self.owner, self.describe or "its transport")
        next_recover = 0.0
        while not self._stopping.is_set():
            if time.monotonic() >= next_recover:
                next_recover = time.monotonic() + self.recover_every
                try:
                    self.store.recover()
                except Exception:
                    log.exception("looking for stranded mail failed; trying again in %.0fs", self.recover_every)
            try:
                tally = await self.run_once()
            except Exception:
                log.exception("the notifier pass failed; the next one retries")
                tally = Tally()
            if self._stopping.is_set():
                break
            if tally.claimed and tally.unreachable is None:
                continue  # there may be more due right now
            await self._sleep(self.poll)

    async def _sleep(self, timeout: float) -> None:
        assert self._wakeup is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), timeout)
        self._wakeup.clear()

    # --- one pass ---------------------------------------------------------------------------------
    async def run_once(self, *, due_only: bool = True) -> Tally:
        """Send what is due, batch after batch over one connection. ``due_only=False`` sends every
        pending row at once, backoff or not (the testing kit's ``drain``); a pass tries a row at most once."""
        tally = Tally()
        if due_only and time.monotonic() < self._down_until:
            return tally
        if not self.store.has_due(due_only=due_only):  # a read: no write lock taken just to find nothing
            return tally
        started = utcnow()
        batch = self.store.claim(self.owner, self.batch, due_only=due_only, before=started)
        if not batch:
            return tally
        self._unsent = dict.fromkeys(row.id for row in batch)
        transport = self.transport()
        try:
            async with transport:
                self._server_up()
                while batch:
                    tally.claimed += len(batch)
                    await self._send(transport, batch, tally)
                    if self._stopping.is_set() or not transport.alive:
                        break
                    batch = self.store.claim(self.owner, self.batch, due_only=due_only, before=started)
                    self._unsent = dict.fromkeys(row.id for row in batch)
        except ConnectFailed as exc:
            tally.claimed += len(batch)
            tally.released += len(batch)
            tally.unreachable = str(exc)
            self.store.release(self.owner, [row.id for row in batch], f"the mail server is unreachable: {exc}")
            self._server_down(exc)
        except asyncio.CancelledError:
            self.store.record(self.owner, self._done)  # what the server already answered stays true
            self.store.release(self.owner, [i for i in self._unsent if i not in {o.id for o in self._done}])
            raise
        finally:
            self._unsent, self._done = {}, []
        self.totals.add(tally)
        telemetry.of(self.store.db).notified(tally)
        return tally

    async def _send(self, transport: Transport, batch: Sequence[Outbound], tally: Tally) -> None:
        """The batch's messages are rendered first, then sent one at a time, in order, on one
        connection. "DATA started" for a message is committed, together with the previous message's
        outcome, while the server answers its MAIL FROM: it only has to be durable before DATA goes
        out, and it is. (Rendering in the gaps of the exchange was tried too: the task switching it
        takes cost more than it hid; see bench/notify.py.)"""
        done: list[Outcome] = []
        self._done = done
        mails = [self._prepare(row, tally) for row in batch]
        step: asyncio.Future[None] | None = None
        try:
            with self.store.recorder(self.owner) as recorder:
                for i, (row, mail) in enumerate(zip(batch, mails, strict=True)):
                    if self._stopping.is_set() or not transport.alive:
                        rest = [r.id for r in batch[i:]]
                        recorder.record(done)
                        self.store.release(self.owner, rest)
                        self._unsent = {}
                        tally.released += len(rest)
                        return
                    if isinstance(mail, Outcome):  # it could not be rendered or addressed
                        done.append(mail)
                        continue
                    try:
                        step = asyncio.ensure_future(transport.mail_from(mail))
                        await asyncio.sleep(0)  # MAIL FROM is on its way: commit while the server answers
                        renew = time.monotonic() - self._renewed > self.store.lease / 4
                        if renew:
                            self._renewed = time.monotonic()
                        mine = recorder.mark(row.id, done, renew=renew)
                        self._settled(done)
                        self._unsent.pop(row.id, None)
                        await step
                        step = None
                        await transport.rcpt_to(mail)
                    except SendError as exc:  # recording this outcome clears the "DATA started" mark again
                        step = None
                        done.append(self._outcome(row, exc.outcome, str(exc), tally))
                        continue
                    if not mine:
                        log.warning("event=mail-skipped job=%s to=%s note=our claim ran out and another notifier "
                                    "took the row back", row.job_id, row.recipient)
                        continue
                    try:
                        reply = await transport.content(mail)
                    except SendError as exc:
                        done.append(self._outcome(row, exc.outcome, str(exc), tally))
                        continue
                    tally.sent += 1
                    done.append(Outcome(row.id, "sent", reply, row.attempts))
                    log.info("event=mail-sent job=%s mail=%s to=%s message_id=%s", row.job_id, row.event,
                             row.recipient, row.message_id)
                self._settle(recorder, done)
            self._unsent = {}
        finally:
            if step is not None and not step.done():
                step.cancel()

    def _prepare(self, row: Outbound, tally: Tally) -> Mail | Outcome:
        """The message, or the outcome of a row that cannot become one."""
        try:
            return self.compose(row)
        except TemplateProblem as exc:  # an operator's template: keep the mail until it is fixed
            log.error("event=mail-template job=%s to=%s error=%s", row.job_id, row.recipient, exc)
            return self._outcome(row, "retry", f"template: {exc}", tally)
        except (UnsendableAddress, ValueError) as exc:
            return self._outcome(row, "failed", str(exc), tally)

    def _settle(self, recorder: Recorder, done: list[Outcome]) -> None:
        """Commit the outcomes so far."""
        if done:
            recorder.record(done)
            self._settled(done)

    def _settled(self, done: list[Outcome]) -> None:
        """``done`` is committed: empty it in place (it stays ``self._done``)."""
        for settled in done:
            self._unsent.pop(settled.id, None)
        done.clear()

    def _outcome(self, row: Outbound, outcome: str, detail: str, tally: Tally) -> Outcome:
        setattr(tally, outcome, getattr(tally, outcome) + 1)
        level = logging.ERROR if outcome in ("failed", "uncertain") else logging.WARNING
        log.log(level, "event=mail-%s job=%s mail=%s to=%s attempt=%d error=%s", outcome, row.job_id, row.event,
                row.recipient, row.attempts, detail)
        return Outcome(row.id, outcome, detail, row.attempts)

    def compose(self, row: Outbound) -> Mail:
        """The message for a row: its templates rendered from the row's snapshot of the job."""
        rendered = self.templates.render(row.event, row.handler, {**row.context, "recipient": row.recipient})
        return compose(mail_from=self.mail_from, recipient=row.recipient, subject=rendered.subject,
                       text=rendered.text, html=rendered.html, message_id=row.message_id, date=utcnow(),
                       headers={"X-Chute-Job": row.job_id, "X-Chute-Event": row.event})

    def _server_down(self, exc: ConnectFailed) -> None:
        first = not self._down_for
        self._down_for = min(max(self._down_for * 2, 0.5), self.reconnect_max)
        self._down_until = time.monotonic() + self._down_for
        log.log(logging.WARNING if first else logging.DEBUG, "the mail server is unreachable (%s); mail waits, "
                "trying again in %.1fs", exc, self._down_for)

    def _server_up(self) -> None:
        if self._down_for:
            log.info("the mail server is back; sending the mail that waited")
        self._down_for = self._down_until = 0.0

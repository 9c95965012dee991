"""Group commit for the intake: concurrent requests share database round trips.

Each request still answers only after MongoDB records its submission as
queued, but requests that arrive while one batch is being written wait
and go together in the next, so under load one ``update_many`` and one
``find`` serve many requests instead of one or two each. With no
concurrency a batch is a single request and nothing waits.
"""
import threading

from bson import ObjectId


class Ticket:
    """One request's place in a batch."""

    __slots__ = ("submission_id", "answer", "token", "error", "done")

    def __init__(self, submission_id):
        self.submission_id = submission_id
        self.answer = None
        self.token = None
        self.error = None
        self.done = False


class Acceptor:
    """Accepts submissions through ``store.accept_many``, batching concurrent calls."""

    def __init__(self, store):
        self.store = store
        self._changed = threading.Condition()
        self._waiting = []
        self._writing = False

    def accept(self, submission_id):
        """``(answer, lease token)``: answer 'queued', 'already' or 'missing'.

        Re-raises the store's error for this batch.
        """
        ticket = Ticket(submission_id)
        with self._changed:
            self._waiting.append(ticket)
            while self._writing and not ticket.done:
                self._changed.wait()
            if not ticket.done:
                batch, self._waiting, self._writing = self._waiting, [], True
        if not ticket.done:
            self._write(batch)
        if ticket.error is not None:
            raise ticket.error
        return ticket.answer, ticket.token

    def _write(self, batch):
        """Write one batch (as its leader), then wake everyone waiting.

        Whatever happens here, even an exception that is not an
        ``Exception``, the batch is answered and the next leader may go:
        otherwise every later request would wait forever.
        """
        token = ObjectId()
        answers, error = None, None
        try:
            answers = self.store.accept_many([ticket.submission_id for ticket in batch], token)
        except BaseException as exc:  # every request of the batch answers with this error
            error = exc
        finally:
            with self._changed:
                for number, ticket in enumerate(batch):
                    if answers is not None and number < len(answers):
                        ticket.answer, ticket.token = answers[number], token
                    elif isinstance(error, Exception):
                        ticket.error = error
                    else:  # interrupted, or answers that do not fit the batch
                        ticket.error = RuntimeError("the intake could not record this request; send it again")
                    ticket.done = True
                self._writing = False
                self._changed.notify_all()
        if error is not None and not isinstance(error, Exception):
            raise error

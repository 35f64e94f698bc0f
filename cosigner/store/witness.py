"""The rollback witness: the journal's head kept outside the database (DESIGN section 4).

A journal that goes back in time (an older copy restored, a lost ``-wal`` file,
a PostgreSQL point-in-time restore) would re-open limits and forget decisions.
Its *head* (the last entry's ``seq`` and ``record_hash``) is therefore written,
after every commit, to a small file on another volume or a Secret-backed path
(``COSIGNER_JOURNAL_WITNESS``).  At start a journal whose head is behind the
witness, or whose entry at the witness's ``seq`` has another hash (not a
descendant of what was witnessed), is refused.

What it cannot detect: an attacker who controls both the database and the
witness file (they can roll both back together).  Exporting the head as the
metric ``cosigner_journal_head_sequence`` and the ``journal.committed`` log
event lets an external system anchor it too.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cosigner.errors import JournalUnavailableError
from cosigner.store.base import Head

SETTING = "COSIGNER_JOURNAL_WITNESS"


@dataclass(frozen=True, slots=True)
class WitnessState:
    """What a witness file holds."""

    journal_id: str
    head: Head


#: Records are padded to this size and rewritten in place: one ``pwrite`` of less than a
#: disk sector and one ``fdatasync`` per commit.  A torn write would leave an unparsable
#: witness, which is refused at start (fail closed; ``journal init`` re-blesses it).
_RECORD = 256


class Witness:
    """A witness file: read at start; created atomically (fsync + rename), then rewritten in
    place after each commit (one small ``pwrite`` + ``fdatasync``)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(os.path.abspath(path))
        self._fd: int | None = None

    def __repr__(self) -> str:
        return f"Witness({str(self.path)!r})"

    def read(self) -> WitnessState | None:
        """The witnessed head, or None when the file does not exist.

        Raises:
            JournalUnavailableError: the file exists but cannot be read or parsed.
        """
        try:
            text = self.path.read_text(encoding="utf-8").rstrip(" ")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise JournalUnavailableError(
                f"{SETTING}: witness {self.path} is unreadable ({_reason(exc)})") from exc
        try:
            data = json.loads(text)
            state = WitnessState(str(data["journal_id"]),
                                 Head(int(data["seq"]), str(data["hash"])))
        except (ValueError, KeyError, TypeError) as exc:
            raise JournalUnavailableError(
                f"{SETTING}: witness {self.path} is not a cosigner witness") from exc
        if state.head.seq < 0 or not state.journal_id:
            raise JournalUnavailableError(f"{SETTING}: witness {self.path} is not valid")
        return state

    def write(self, journal_id: str, head: Head) -> None:
        """Record ``head`` durably (0600, atomic).

        Raises:
            OSError: the file cannot be written (the caller decides what that means).
        """
        text = json.dumps({"journal_id": journal_id, "seq": head.seq, "hash": head.hash},
                          sort_keys=True) + "\n"
        record = text.encode("utf-8").ljust(_RECORD)
        if self._fd is not None:
            try:
                if os.fstat(self._fd).st_ino == os.stat(self.path).st_ino:
                    os.pwrite(self._fd, record, 0)
                    os.fdatasync(self._fd)
                    return
            except OSError:
                pass
            self.close()
        self._create(record)

    def _create(self, record: bytes) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, record)
            os.fsync(fd)
            os.replace(tmp, self.path)
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def close(self) -> None:
        """Forget the open file (the next write re-creates it atomically)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


def check_head(where: str, state: WitnessState | None, journal_id: str, head: Head,
               hash_at: Callable[[int], str | None], witness: Witness) -> None:
    """Refuse a journal that is not the witnessed one, is behind it, or left its line.

    ``hash_at(seq)`` is the journal's ``record_hash`` at ``seq`` (None if absent).
    A missing witness is accepted only for an empty journal (a new one).

    Raises:
        JournalUnavailableError: one line naming the journal, the witness and the problem.
    """
    if state is None:
        if head.seq == 0:
            return
        raise JournalUnavailableError(
            f"journal {where} has {head.seq} entries but its witness {witness.path} does "
            f"not exist; if this journal is the right one, `cosigner journal init` verifies "
            f"it and writes the witness")
    if state.journal_id != journal_id:
        raise JournalUnavailableError(
            f"journal {where} (id {journal_id}) is not the journal its witness {witness.path} "
            f"recorded (id {state.journal_id}); a different or re-created journal")
    if head.seq < state.head.seq:
        raise JournalUnavailableError(
            f"journal {where} is behind its witness {witness.path}: head seq {head.seq}, "
            f"witnessed seq {state.head.seq}; it was rolled back or lost writes")
    if state.head.seq > 0 and hash_at(state.head.seq) != state.head.hash:
        raise JournalUnavailableError(
            f"journal {where} is not a descendant of its witness {witness.path}: the entry at "
            f"seq {state.head.seq} is not the one witnessed")


def _reason(exc: BaseException) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__

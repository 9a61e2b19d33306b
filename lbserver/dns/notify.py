"""Alerts for the DNS arbiter: state changes only, batched, sent by SMTP.

Each cycle the arbiter states which alert conditions hold now, as
``{key: message}`` (e.g. ``"excluded/wms-alice/wms01": "..."``).
:class:`AlertTracker` compares that with the previous cycle and returns only
what changed: a condition that appears is *raised*, one that disappears is
*cleared*; an unchanged condition produces nothing, however many cycles it
lasts. The changes of one cycle go out as one mail (:class:`Mailer`); a mail
that cannot be sent is logged and its changes are kept for the next attempt,
so an SMTP outage loses nothing and never stops the arbiter.

The tracker's state can be saved to a file, so cron mode (``--once``, a fresh
process each run) does not repeat alerts either.
"""

from __future__ import annotations

import json
import logging
import smtplib
import socket
import ssl
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from common.atomicfile import write_atomic
from lbserver.config.settings import DNS

log = logging.getLogger("lbserver.dns.notify")

MAX_PENDING = 500


@dataclass(frozen=True)
class Change:
    """One alert state change: ``raised`` True when the condition appeared, False when it cleared."""

    key: str
    raised: bool
    message: str
    at: float

    def line(self) -> str:
        """One human-readable line for a mail or a log."""
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.at))
        return f"{stamp}  {'PROBLEM ' if self.raised else 'RESOLVED'}  {self.message}"


class AlertTracker:
    """Remembers which alert conditions hold, to report only their changes."""

    def __init__(self, active: Mapping[str, str] | None = None) -> None:
        self.active: dict[str, str] = dict(active or {})

    def update(self, now_active: Mapping[str, str], cleared_messages: Mapping[str, str] | None = None,
               at: float | None = None) -> list[Change]:
        """Take this cycle's conditions; return what changed since the previous call.

        ``cleared_messages`` optionally words the clearing of a key (default:
        ``"resolved: <the message it was raised with>"``).
        """
        at = time.time() if at is None else at
        cleared_messages = cleared_messages or {}
        changes: list[Change] = []
        for key, msg in now_active.items():
            if key not in self.active:
                changes.append(Change(key, True, msg, at))
        for key, msg in self.active.items():
            if key not in now_active:
                changes.append(Change(key, False, cleared_messages.get(key, f"resolved: {msg}"), at))
        self.active = dict(now_active)
        return changes

    def forget(self, key: str) -> None:
        """Drop one condition without reporting it (e.g. its alias was disabled or removed)."""
        self.active.pop(key, None)

    def save(self, path: str) -> None:
        """Write the active conditions to ``path`` (atomically)."""
        write_atomic(path, json.dumps({"active": self.active}), 0o644)

    @classmethod
    def load(cls, path: str) -> AlertTracker:
        """Read a saved state; a missing or damaged file gives an empty tracker."""
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
            active = data.get("active", {})
            if isinstance(active, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in active.items()):
                return cls(active)
            log.warning("alert state file %s has an unexpected layout; starting afresh", path)
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            log.warning("cannot read alert state file %s (%s); starting afresh", path, exc)
        return cls()


@dataclass(frozen=True)
class MailSettings:
    """Where and how mails are sent (taken from ``<dns>``)."""

    contact: tuple[str, ...]
    smtp_host: str = DNS.smtp.default[0]
    smtp_port: int = DNS.smtp.default[1]
    starttls: bool = DNS.smtp_starttls.default
    user: str | None = DNS.smtp_user.default
    password_file: str | None = DNS.smtp_password_file.default
    mail_from: str | None = DNS.mail_from.default
    timeout: float = 10.0


def parse_contacts(text: str | None) -> tuple[str, ...]:
    """``a@x, b@y`` -> ("a@x", "b@y"); empty for None."""
    if not text:
        return ()
    return tuple(p for p in (s.strip() for s in text.replace(";", ",").split(",")) if p)


def compose(settings: MailSettings, changes: Sequence[Change], summary: str = "",
            hostname: str | None = None) -> EmailMessage:
    """The mail reporting ``changes`` (one line each), followed by ``summary``."""
    host = hostname or socket.getfqdn()
    raised = sum(1 for c in changes if c.raised)
    cleared = len(changes) - raised
    parts = []
    if raised:
        parts.append(f"{raised} problem{'s' if raised != 1 else ''}")
    if cleared:
        parts.append(f"{cleared} resolved")
    msg = EmailMessage()
    msg["Subject"] = f"[lbserver {host}] DNS aliases: {', '.join(parts)}"
    msg["From"] = settings.mail_from or f"lbserver@{host}"
    msg["To"] = ", ".join(settings.contact)
    msg["Date"] = formatdate(localtime=True)
    msg["Message-ID"] = make_msgid(domain=host)
    body = [f"The DNS arbiter on {host} reports these changes:", ""]
    body += [c.line() for c in changes]
    if summary:
        body += ["", "Aliases now:", "", summary.rstrip()]
    body += ["", "-- ", "lbserver (mille-xterm load balancer)"]
    msg.set_content("\n".join(body) + "\n")
    return msg


def read_password(path: str) -> str:
    """The SMTP password: the file's first line (SMTPException naming the file when unreadable)."""
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.readline().rstrip("\r\n")
    except OSError as exc:
        raise smtplib.SMTPException(f"cannot read smtp-password-file {path}: {exc.strerror or exc}") from None
    except UnicodeError:
        raise smtplib.SMTPException(f"smtp-password-file {path} is not UTF-8 text") from None


class Mailer:
    """Sends batches of changes; keeps unsent ones for the next attempt."""

    def __init__(self, settings: MailSettings) -> None:
        self.settings = settings
        self.pending: list[Change] = []
        self._failing = False

    def send(self, changes: Sequence[Change], summary: str = "") -> bool:
        """Send ``changes`` plus any left from failed attempts in one mail; never raises.

        Returns True when nothing is left pending.
        """
        self.pending.extend(changes)
        if len(self.pending) > MAX_PENDING:
            # Keep the newest; an admin reading hundreds of lines wants the latest state.
            self.pending = self.pending[-MAX_PENDING:]
        if not self.pending:
            return True
        if not self.settings.contact:
            self.pending.clear()
            return True
        msg = compose(self.settings, self.pending, summary)
        try:
            self._deliver(msg)
        except (OSError, smtplib.SMTPException, ssl.SSLError, UnicodeError) as exc:
            level = logging.DEBUG if self._failing else logging.WARNING
            log.log(level, "cannot send alert mail to %s through %s:%d: %s (will retry with the next change "
                           "or cycle)", ", ".join(self.settings.contact), self.settings.smtp_host,
                    self.settings.smtp_port, _smtp_reason(exc))
            self._failing = True
            return False
        if self._failing:
            log.info("alert mail sent again through %s:%d", self.settings.smtp_host, self.settings.smtp_port)
        self._failing = False
        log.info("alert mail sent to %s (%d change%s)", ", ".join(self.settings.contact), len(self.pending),
                 "" if len(self.pending) == 1 else "s")
        self.pending.clear()
        return True

    def _deliver(self, msg: EmailMessage) -> None:
        s = self.settings
        with smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.timeout) as smtp:
            smtp.ehlo_or_helo_if_needed()
            if s.starttls:
                smtp.starttls(context=ssl.create_default_context())
                smtp.ehlo()
            if s.user:
                if not s.password_file:
                    raise smtplib.SMTPException("smtp-user is set but smtp-password-file is not")
                smtp.login(s.user, read_password(s.password_file))
            smtp.send_message(msg)


def _smtp_reason(exc: BaseException) -> str:
    # SMTPAuthenticationError carries the server's text, never our password.
    if isinstance(exc, smtplib.SMTPResponseException):
        text = exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
        return f"server answered {exc.smtp_code} {text}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return f"{type(exc).__name__}: {exc}"

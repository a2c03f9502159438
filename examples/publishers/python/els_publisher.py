#!/usr/bin/env python3
"""Publishes a hospital's drug stock movements to els-bridge, the way a HIS/SPD should.

    python3 els_publisher.py --url amqp://USER:PASSWORD@rabbitmq:5672/VHOST movements.csv
    python3 els_publisher.py --print movements.csv | els-bridge validate /dev/stdin

Each row of the warehouse system's movement table (here a CSV export standing in for the
database query; see DrugMovement) becomes one event of contract §1:

- routing key `<infno>.<fixmedins_code>` on the topic exchange `els.events`;
- `delivery_mode` 2 (persistent) and `content_type` application/json: a broker restart
  does not lose it;
- `message_id` `<infno>.<fixmedins_code>.<key>.v<version>`: the same for every re-send of
  one version, different for each correction, so els-bridge recognises a copy;
- `version` = the row's version, which grows with every correction of the row: the
  platform keeps the highest, whatever order the events arrive in;
- times converted to Beijing time in the spec's `yyyy-MM-dd HH:mm:ss`, decimals as text.

Publishing uses publisher confirms with a bounded outbox: at most --max-unconfirmed
messages are waiting for the broker's confirm; a message leaves the outbox only when the
broker confirmed it (and did not return it as unroutable). When the connection is lost,
every unconfirmed message is published again after reconnecting (some may then arrive
twice: harmless, see message_id). Needs pika (Debian: python3-pika; PyPI: pika).

Exit status: 0 when every row was confirmed, 1 when some were not (or a row is invalid),
2 for usage errors.
"""

from __future__ import annotations

import argparse
import collections
import csv
import dataclasses
import datetime
import json
import logging
import sys
import time
from decimal import Decimal, InvalidOperation
from typing import Iterable, Iterator

import pika
from pika.spec import Basic

LOG = logging.getLogger("els_publisher")

# China has kept UTC+8 all year since 1991: a fixed offset is exact and needs no tzdata.
BEIJING = datetime.timezone(datetime.timedelta(hours=8), "Beijing")
SPEC_TIME = "%Y-%m-%d %H:%M:%S"  # the spec's T: yyyy-MM-dd HH:mm:ss, Beijing time


def spec_time(moment: datetime.datetime) -> str:
    """`moment` in Beijing time, as the spec writes times. A naive time is refused: which
    zone the database meant would be a guess, and an hour's error is a wrong day."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"time without a zone: {moment.isoformat()} (give the database's zone)")
    return moment.astimezone(BEIJING).strftime(SPEC_TIME)


def spec_decimal(value: Decimal, field: str) -> str:
    """A decimal as the spec's D: at most 12 digits, 4 after the point, never an exponent."""
    if not value.is_finite() or value < 0:
        raise ValueError(f"{field}: {value} is not a non-negative number")
    text = format(value.normalize(), "f")
    whole, _, fraction = text.partition(".")
    if len(fraction) > 4 or len(whole.lstrip("0")) + len(fraction) > 12:
        raise ValueError(f"{field}: {text} has more than 12 digits or more than 4 after the point")
    return text


@dataclasses.dataclass(frozen=True)
class DrugMovement:
    """One row of the warehouse system's drug movement table: a stock-in (ELS7002) or a
    stock-out (ELS7003). In a Java/Spring system this is the entity; here, a dataclass."""

    direction: str  # "in" or "out"
    fixmedins_code: str  # the institution (12 characters)
    line_id: str  # hosp_purc_mgt_detl: the row's own primary key, stable across corrections
    row_version: int  # grows with every change of the row (a version column or update time in ms)
    drug_code: str
    prov_plaf_prod_code: str
    drug_genname: str
    dosform: str
    spec: str
    convrat: str
    pacunt: str
    prodentp_name: str
    delventp_name: str
    delventp_code: str
    purc_pric: Decimal
    quantity: Decimal
    moved_at: datetime.datetime  # with its zone
    er_flag: bool = False
    prodentp_code: str | None = None
    stroom_name: str | None = None
    prov_plaf_prod_id: str | None = None
    prov_plaf_purc_ord_det_id: str | None = None  # "0" when not a platform order

    @property
    def infno(self) -> str:
        return {"in": "ELS7002", "out": "ELS7003"}[self.direction]

    @property
    def routing_key(self) -> str:
        return f"{self.infno}.{self.fixmedins_code}"

    @property
    def message_id(self) -> str:
        return f"{self.infno}.{self.fixmedins_code}.{self.line_id}.v{self.row_version}"

    def event(self) -> dict:
        """The event of contract §1, with exactly the spec's field names in `data`."""
        quantity_field, time_field = ("stoin_cnt", "stoin_time") if self.direction == "in" else ("stoout_cnt", "stoout_time")
        data = {
            "hosp_purc_mgt_detl": self.line_id,
            "drug_code": self.drug_code,
            "prov_plaf_prod_code": self.prov_plaf_prod_code,
            "drug_genname": self.drug_genname,
            "dosform": self.dosform,
            "spec": self.spec,
            "convrat": self.convrat,
            "pacunt": self.pacunt,
            "prodentp_name": self.prodentp_name,
            "delventp_name": self.delventp_name,
            "delventp_code": self.delventp_code,
            "purc_pric": spec_decimal(self.purc_pric, "purc_pric"),
            quantity_field: spec_decimal(self.quantity, quantity_field),
            time_field: spec_time(self.moved_at),
            "er_flag": "1" if self.er_flag else "0",
        }
        optional = {
            "prodentp_code": self.prodentp_code,
            "stroom_name": self.stroom_name,
            "prov_plaf_prod_id": self.prov_plaf_prod_id,
            "prov_plaf_purc_ord_det_id": self.prov_plaf_purc_ord_det_id,
        }
        data.update({k: v for k, v in optional.items() if v not in (None, "")})
        if self.direction == "in" and "prov_plaf_purc_ord_det_id" not in data:
            raise ValueError("prov_plaf_purc_ord_det_id is required for a stock-in (\"0\" when not a platform order)")
        return {"infno": self.infno, "fixmedins_code": self.fixmedins_code, "version": self.row_version, "data": data}

    @classmethod
    def from_record(cls, row: dict[str, str]) -> "DrugMovement":
        """From one row of the export (every value text, as a database driver or CSV gives it)."""
        if row.get("direction") not in ("in", "out"):
            raise ValueError(f"direction must be in or out, got {row.get('direction')!r}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(row) - set(fields)
        if unknown:
            raise ValueError(f"unknown columns: {', '.join(sorted(unknown))}")
        values: dict[str, object] = {}
        for name, text in row.items():
            text = (text or "").strip()
            if text == "":
                continue
            try:
                if name == "row_version":
                    values[name] = int(text)
                elif name in ("purc_pric", "quantity"):
                    values[name] = Decimal(text)
                elif name == "moved_at":
                    values[name] = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
                elif name == "er_flag":
                    values[name] = text in ("1", "true", "yes")
                else:
                    values[name] = text
            except (ValueError, InvalidOperation) as error:
                raise ValueError(f"{name}: {text!r}: {error}") from None
        try:
            return cls(**values)  # type: ignore[arg-type]
        except TypeError as error:  # a required column missing
            raise ValueError(str(error)) from None


@dataclasses.dataclass
class Outgoing:
    """One message on its way: body and properties fixed once, so a re-send is identical."""

    routing_key: str
    body: bytes
    message_id: str
    refusals: int = 0
    returned: bool = False
    due: float = 0.0  # when a refused message may be sent again (monotonic seconds)
    created: int = dataclasses.field(default_factory=lambda: int(time.time()))

    @classmethod
    def of(cls, movement: DrugMovement) -> "Outgoing":
        body = json.dumps(movement.event(), ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        return cls(movement.routing_key, body, movement.message_id)

    def properties(self) -> pika.BasicProperties:
        return pika.BasicProperties(
            delivery_mode=2,  # persistent
            content_type="application/json",
            content_encoding="utf-8",
            message_id=self.message_id,
            timestamp=self.created,
        )


class PublishFailed(Exception):
    pass


class ConfirmedPublisher:
    """Publishes messages with publisher confirms, at most `max_unconfirmed` in flight.

    The outbox holds every message published and not yet confirmed, by delivery tag. A
    positive confirm removes it; a negative confirm, or a return (no queue bound: the
    mandatory flag), puts it back to be sent again after a growing wait; six refusals of
    one message stop the run. A lost connection puts the whole outbox back, first in line,
    in its order, and the publisher reconnects with backoff for up to `max_retry_secs`.
    """

    MAX_REFUSALS = 6

    def __init__(
        self, url: str, exchange: str = "els.events", max_unconfirmed: int = 256, max_retry_secs: float = 300, rate: float = 0, heartbeat_secs: int = 10
    ):
        if max_unconfirmed < 1:
            raise ValueError("max_unconfirmed must be at least 1")
        self.parameters = pika.URLParameters(url)
        # A link that goes silent without closing (a dead NAT entry, a failed-over firewall)
        # is noticed within about twice this, and the outbox is then sent again.
        self.parameters.heartbeat = heartbeat_secs
        self.exchange = exchange
        self.max_unconfirmed = max_unconfirmed
        self.max_retry_secs = max_retry_secs
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.confirmed = 0
        self.reconnects = 0
        self.resent = 0
        self._outbox: collections.OrderedDict[int, Outgoing] = collections.OrderedDict()
        self._by_id: dict[str, Outgoing] = {}
        self._first: collections.deque[Outgoing] = collections.deque()  # to send before new ones
        self._source: Iterator[Outgoing] = iter(())
        self._exhausted = False
        self._next_tag = 0
        self._next_at = 0.0
        self._connection: pika.SelectConnection | None = None
        self._channel = None
        self._done = False
        self._fatal: str | None = None
        self._pump_scheduled = False

    # --- the run -------------------------------------------------------------------------
    def publish(self, messages: Iterable[Outgoing]) -> None:
        """Publishes every message and returns once each is confirmed; raises PublishFailed."""
        self._source = iter(messages)
        lost_since: float | None = None
        backoff = 0.5
        while True:
            self._connection = pika.SelectConnection(
                self.parameters,
                on_open_callback=self._on_connection_open,
                on_open_error_callback=self._on_connection_open_error,
                on_close_callback=self._on_connection_closed,
            )
            confirmed_before = self.confirmed
            self._connection.ioloop.start()  # runs until a callback stops it
            if self._fatal:
                raise PublishFailed(self._fatal)
            if self._done:
                return
            # The connection is gone: everything unconfirmed goes out again, first and in order.
            self._requeue_outbox()
            now = time.monotonic()
            if self.confirmed > confirmed_before or lost_since is None:
                lost_since, backoff = now, 0.5
            if now - lost_since > self.max_retry_secs:
                raise PublishFailed(f"no broker connection for {self.max_retry_secs:.0f} s; {len(self._first)} message(s) not confirmed")
            LOG.warning("connection lost; %d unconfirmed message(s) will be published again; reconnecting in %.1f s", len(self._first), backoff)
            time.sleep(backoff)
            backoff = min(backoff * 2, 15.0)
            self.reconnects += 1

    def _requeue_outbox(self) -> None:
        unconfirmed = list(self._outbox.values())
        self._outbox.clear()
        for message in reversed(unconfirmed):
            message.returned = False
            self._first.appendleft(message)
        self.resent += len(unconfirmed)
        self._channel = None
        self._pump_scheduled = False  # a pump scheduled on the lost connection's loop never runs
        self._next_at = 0.0

    # --- connection and channel ----------------------------------------------------------
    def _on_connection_open(self, connection) -> None:
        connection.channel(on_open_callback=self._on_channel_open)

    def _on_connection_open_error(self, connection, error) -> None:
        LOG.warning("cannot connect to the broker: %s", error)
        connection.ioloop.stop()

    def _on_connection_closed(self, connection, reason) -> None:
        if not self._done:
            LOG.warning("broker connection closed: %s", reason)
        connection.ioloop.stop()

    def _on_channel_open(self, channel) -> None:
        self._channel = channel
        self._next_tag = 0  # delivery tags count from 1 on every new channel
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(self._on_return)
        channel.confirm_delivery(ack_nack_callback=self._on_confirm, callback=lambda _frame: self._pump())

    def _on_channel_closed(self, channel, reason) -> None:
        # 404: the exchange does not exist (no worker has declared the topology yet).
        code = getattr(reason, "reply_code", 0)
        if code == 404:
            self._fatal = f"the exchange {self.exchange!r} does not exist: start a worker first (it declares it): {reason}"
        elif not self._done:
            LOG.warning("channel closed: %s", reason)
        if self._connection is not None and self._connection.is_open:
            self._connection.close()

    # --- publishing ----------------------------------------------------------------------
    def _next_message(self, now: float) -> Outgoing | None:
        if self._first and self._first[0].due <= now:
            return self._first.popleft()
        if not self._exhausted:
            message = next(self._source, None)
            if message is not None:
                return message
            self._exhausted = True
        return None

    def _schedule_pump(self, delay: float) -> None:
        if not self._pump_scheduled and self._connection is not None:
            self._pump_scheduled = True

            def run() -> None:
                self._pump_scheduled = False
                self._pump()

            self._connection.ioloop.call_later(max(delay, 0.0), run)

    def _pump(self) -> None:
        """Publishes while the outbox has room, then waits for confirms (or the pace)."""
        if self._channel is None or not self._channel.is_open:
            return
        while len(self._outbox) < self.max_unconfirmed:
            now = time.monotonic()
            if self.interval and now < self._next_at:
                self._schedule_pump(self._next_at - now)
                return
            message = self._next_message(now)
            if message is None:
                break
            self._channel.basic_publish(self.exchange, message.routing_key, message.body, message.properties(), mandatory=True)
            self._next_tag += 1
            self._outbox[self._next_tag] = message
            self._by_id[message.message_id] = message
            self._next_at = now + self.interval
        if self._first:  # refused ones waiting for their time
            self._schedule_pump(min(m.due for m in self._first) - time.monotonic())
        if self._exhausted and not self._first and not self._outbox:
            self._done = True
            self._connection.close()

    def _on_return(self, channel, method, properties, body) -> None:
        # basic.return comes before the confirm of the same message.
        message = self._by_id.get(properties.message_id)
        if message is not None:
            message.returned = True
            LOG.warning("returned by the broker (%s %s): %s", method.reply_code, method.reply_text, message.message_id)

    def _on_confirm(self, frame) -> None:
        method = frame.method
        positive = isinstance(method, Basic.Ack)
        tags = [t for t in self._outbox if t <= method.delivery_tag] if method.multiple else [method.delivery_tag]
        for tag in tags:
            message = self._outbox.pop(tag, None)
            if message is None:
                continue
            if positive and not message.returned:
                self.confirmed += 1
                self._by_id.pop(message.message_id, None)
                continue
            message.refusals += 1
            message.returned = False
            if message.refusals >= self.MAX_REFUSALS:
                self._fatal = f"{message.message_id} was refused {message.refusals} times (no queue bound to {self.exchange!r}?)"
                self._connection.close()
                return
            message.due = time.monotonic() + min(0.5 * 2 ** (message.refusals - 1), 15.0)
            self._first.append(message)
            self.resent += 1
        self._pump()


def read_movements(path: str) -> Iterator[DrugMovement]:
    """The day's movements, in the order the warehouse system wrote them."""
    with open(path, newline="", encoding="utf-8-sig") as file:
        for line, row in enumerate(csv.DictReader(file), start=2):
            try:
                yield DrugMovement.from_record(row)
            except ValueError as error:
                raise ValueError(f"{path}:{line}: {error}") from None


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="Publish drug stock movements to els-bridge (contract §1) with publisher confirms.")
    parser.add_argument("rows", help="CSV export of the movement table (columns: DrugMovement's fields)")
    parser.add_argument("--url", help="broker URL, e.g. amqp://USER:PASSWORD@rabbitmq:5672/VHOST")
    parser.add_argument("--print", action="store_true", help="print the events as JSON Lines instead of publishing (for els-bridge validate)")
    parser.add_argument("--exchange", default="els.events")
    parser.add_argument("--max-unconfirmed", type=int, default=256, help="outbox size: messages awaiting a confirm")
    parser.add_argument("--max-retry-secs", type=float, default=300, help="give up after this long without a broker")
    parser.add_argument("--rate", type=float, default=0, help="at most this many messages a second (0: no limit)")
    parser.add_argument("--heartbeat-secs", type=int, default=10, help="AMQP heartbeat: a silent link is given up after about twice this")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    logging.getLogger("pika").setLevel(logging.CRITICAL)  # its own log lines repeat ours

    try:
        # Convert every row before publishing: a row that is not a valid event would become
        # a dead letter; better refuse the export here.
        messages = [Outgoing.of(movement) for movement in read_movements(args.rows)]
    except (OSError, ValueError) as error:
        print(f"els_publisher: {error}", file=sys.stderr)
        return 1
    if args.print:
        for message in messages:
            sys.stdout.write(message.body.decode("utf-8") + "\n")
        return 0
    if not args.url:
        parser.error("--url is needed to publish")
    publisher = ConfirmedPublisher(args.url, args.exchange, args.max_unconfirmed, args.max_retry_secs, args.rate, args.heartbeat_secs)
    try:
        publisher.publish(messages)
        status = 0
    except PublishFailed as error:
        print(f"els_publisher: {error}", file=sys.stderr)
        status = 1
    except KeyboardInterrupt:
        print("els_publisher: interrupted", file=sys.stderr)
        status = 1
    print(
        f"rows {len(messages)}, confirmed {publisher.confirmed}, published again {publisher.resent}, reconnects {publisher.reconnects}",
        file=sys.stderr,
    )
    return status if publisher.confirmed == len(messages) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

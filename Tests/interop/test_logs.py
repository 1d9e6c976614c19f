"""slipway-logs (slipway.logs.v1.Logs) driven by grpcio: append and acknowledgements, ordering, Tail's
backlog-to-live switch, resume, filters, long lines, slow subscribers, kill -9 durability, retention
with the `dropped` marker, Query paging, bad input.

Every wait polls a condition against a deadline; no sleep stands in for a condition. Tests that kill,
restart or configure retention start their own server over their own data directory.
"""
import itertools
import os
import queue
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import LogsServer

_ids = itertools.count(1)


def unique(prefix):
    return f"{prefix}-{int(time.time() * 1000) % 100000000}-{next(_ids)}"


# --- fixtures and helpers --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server():
    """One slipway-logs for the tests that need no special flags or restarts."""
    srv = LogsServer()
    yield srv
    assert srv.alive(), "slipway-logs died during the tests:\n" + srv.log()[-3000:]
    srv.cleanup()


def make_channel(server):
    """A channel to `server` (a LogsServer) as the operator, over mutual TLS."""
    return server.channel(options=[
        ("grpc.max_receive_message_length", 16 * 1024 * 1024),
        ("grpc.max_send_message_length", 16 * 1024 * 1024),
    ])


@pytest.fixture
def channel(server):
    with make_channel(server) as ch:
        yield ch


@pytest.fixture
def stub(channel, logs_pb):
    return logs_pb[1].LogsStub(channel)


def app_key(pb, env=None, service=None):
    return pb[0].StreamKey(environment_id=env or unique("env"), service_id=service or unique("svc"))


def dep_key(pb, env=None, deployment=None):
    return pb[0].StreamKey(environment_id=env or unique("env"), deployment_id=deployment or unique("dep"))


def line(pb, key, text, level=None, instance="i-1", source=None):
    return pb[0].LogLine(
        stream=key, text=text, level=level if level is not None else pb[0].INFO,
        source=source if source is not None else pb[0].STDOUT, instance_id=instance)


def key_tuple(key):
    return (key.environment_id, key.deployment_id, key.service_id)


class Appender:
    """One Append call: `send` writes a batch and waits for its acknowledgement."""

    def __init__(self, stub, pb, timeout=300):
        self.pb = pb
        self.requests = queue.Queue()
        self.batch_id = 0

        def generate():
            while True:
                item = self.requests.get()
                if item is None:
                    return
                yield item

        self.call = stub.Append(generate(), timeout=timeout)

    def send(self, lines):
        self.batch_id += 1
        self.requests.put(self.pb[0].AppendRequest(batch_id=self.batch_id, lines=lines))
        response = next(self.call)
        assert response.batch_id == self.batch_id, f"acknowledgement for batch {response.batch_id}, expected {self.batch_id}"
        return response

    def range_of(self, response, key):
        ranges = [r for r in response.ranges if key_tuple(r.stream) == key_tuple(key)]
        assert len(ranges) == 1, f"expected one range for {key}, got {response.ranges}"
        return ranges[0].first_seq, ranges[0].last_seq

    def close(self):
        self.requests.put(None)
        assert list(self.call) == []


def append_texts(stub, pb, key, texts, batch=100, **kw):
    """Appends `texts` to `key` in batches; returns (first_seq, last_seq) of all of them."""
    appender = Appender(stub, pb)
    first = last = None
    for i in range(0, len(texts), batch):
        response = appender.send([line(pb, key, t, **kw) for t in texts[i:i + batch]])
        f, l = appender.range_of(response, key)
        assert l - f + 1 == len(texts[i:i + batch])
        assert last is None or f == last + 1, f"range {f}..{l} does not follow {last}"
        first = f if first is None else first
        last = l
    appender.close()
    return first, last


class Tailer:
    """A Tail call read by a background thread into `items` (and its lines into `_lines`)."""

    def __init__(self, stub, request, timeout=300):
        self.call = stub.Tail(request, timeout=timeout)
        self.items = []
        self._lines = []
        self.error = None
        self.done = False
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            for item in self.call:
                with self.cond:
                    self.items.append(item)
                    if item.WhichOneof("item") == "line":
                        self._lines.append(item.line)
                    self.cond.notify_all()
        except grpc.RpcError as error:
            with self.cond:
                self.error = error
        finally:
            with self.cond:
                self.done = True
                self.cond.notify_all()

    def lines(self):
        with self.cond:
            return list(self._lines)

    def wait(self, predicate, timeout=60, what="the condition"):
        """Waits until predicate(lines received so far) holds; the predicate must be cheap (it runs per item)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate(self._lines):
                if self.done:
                    raise AssertionError(f"the Tail ended before {what}: {self.error!r}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    last = self._lines[-1].seq if self._lines else None
                    raise AssertionError(f"timed out waiting for {what}; got {len(self.items)} items, last seq {last}")
                self.cond.wait(remaining)

    def wait_seq(self, seq, timeout=60):
        self.wait(lambda lines: bool(lines) and lines[-1].seq >= seq, timeout, f"seq {seq}")

    def wait_text(self, text, timeout=30):
        """Waits for a line with this text among the lines received after the call (scans only new lines)."""
        seen = [0]

        def found(lines):
            hit = any(l.text == text for l in lines[seen[0]:])
            seen[0] = len(lines)
            return hit

        self.wait(found, timeout, f"the line {text!r}")

    def cancel(self):
        self.call.cancel()
        self.thread.join(timeout=10)


def assert_contiguous(seqs, first, last):
    assert seqs == list(range(first, last + 1)), describe_gaps(seqs, first, last)


def describe_gaps(seqs, first, last):
    expected = set(range(first, last + 1))
    got = set(seqs)
    dups = len(seqs) - len(got)
    order = sum(1 for a, b in zip(seqs, seqs[1:]) if b <= a)
    missing = sorted(expected - got)
    extra = sorted(got - expected)
    return (f"expected seqs {first}..{last}: {len(seqs)} received, {len(missing)} missing "
            f"(first {missing[:5]}), {dups} duplicated, {order} out of order, extra {extra[:5]}")


def query_all(stub, pb, key, page_size=1000, **kw):
    lines, token = [], ""
    for _ in range(10_000):
        response = stub.Query(pb[0].QueryRequest(stream=key, page_size=page_size, page_token=token, **kw), timeout=30)
        lines.extend(response.lines)
        token = response.next_page_token
        if not token:
            return lines
    raise AssertionError("Query never ended")


def health_status(server):
    with server.channel() as ch:
        return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5).status


def poll(condition, timeout, what, every=0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def streams_by_key(stub, pb):
    return {key_tuple(s.stream): s for s in stub.ListStreams(pb[0].ListStreamsRequest(), timeout=10).streams}


# --- the API serves ---------------------------------------------------------------------------------


def test_reflection_lists_logs_service(server):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with server.channel() as ch:
        assert "slipway.logs.v1.Logs" in set(ProtoReflectionDescriptorDatabase(ch).get_services())


# --- Append ----------------------------------------------------------------------------------------


def test_append_acknowledges_each_batch_with_ranges(stub, logs_pb):
    pb = logs_pb
    env = unique("env")
    a, b = app_key(pb, env, "api"), dep_key(pb, env)
    appender = Appender(stub, pb)
    # One batch with lines of two streams, interleaved: one range per stream.
    first = appender.send([line(pb, a, "a1"), line(pb, b, "b1"), line(pb, a, "a2"), line(pb, a, "a3"), line(pb, b, "b2")])
    assert appender.range_of(first, a) == (1, 3)
    assert appender.range_of(first, b) == (1, 2)
    assert len(first.ranges) == 2
    second = appender.send([line(pb, b, "b3")])
    assert [key_tuple(r.stream) for r in second.ranges] == [key_tuple(b)]
    assert appender.range_of(second, b) == (3, 3)
    third = appender.send([line(pb, a, f"a{i}") for i in range(4, 104)])
    assert appender.range_of(third, a) == (4, 103)
    appender.close()

    # Several batches in flight on one call: acknowledged in order, each with its own batch_id.
    requests = [pb[0].AppendRequest(batch_id=1000 + i, lines=[line(pb, a, f"p{i}-{j}") for j in range(10)]) for i in range(20)]
    responses = list(stub.Append(iter(requests), timeout=30))
    assert [r.batch_id for r in responses] == [1000 + i for i in range(20)]
    assert [(r.ranges[0].first_seq, r.ranges[0].last_seq) for r in responses] == [(104 + 10 * i, 113 + 10 * i) for i in range(20)]

    # The server assigns seq and timestamp; what the producer put there is ignored.
    lines = query_all(stub, pb, a)
    assert [l.seq for l in lines] == list(range(1, 304))
    assert [l.text for l in lines[:3]] == ["a1", "a2", "a3"]
    assert all(l.timestamp_nanos > 1_600_000_000 * 10**9 for l in lines)
    assert all(key_tuple(l.stream) == key_tuple(a) for l in lines)
    assert [l.text for l in query_all(stub, pb, b)] == ["b1", "b2", "b3"]

    infos = streams_by_key(stub, pb)
    assert infos[key_tuple(a)].first_seq == 1 and infos[key_tuple(a)].last_seq == 303 and infos[key_tuple(a)].bytes > 0
    assert infos[key_tuple(b)].first_seq == 1 and infos[key_tuple(b)].last_seq == 3 and infos[key_tuple(b)].bytes > 0


def test_producer_fields_survive(stub, logs_pb):
    pb = logs_pb
    key = dep_key(pb)
    sent = pb[0].LogLine(stream=key, text="step 3/7 done ✓", level=pb[0].WARN, source=pb[0].SYSTEM, instance_id="builder-1",
                         stage="build", step="compile", emitted_nanos=1_700_000_000_123_456_789, seq=999, timestamp_nanos=5)
    appender = Appender(stub, pb)
    assert appender.range_of(appender.send([sent]), key) == (1, 1)
    appender.close()
    (got,) = query_all(stub, pb, key)
    assert (got.seq, got.text, got.level, got.source, got.instance_id, got.stage, got.step, got.emitted_nanos, got.continued) == \
        (1, "step 3/7 done ✓", pb[0].WARN, pb[0].SYSTEM, "builder-1", "build", "compile", 1_700_000_000_123_456_789, False)
    assert got.timestamp_nanos != 5 and abs(got.timestamp_nanos - time.time_ns()) < 60 * 10**9


def test_text_with_nul_and_control_characters_round_trips(stub, logs_pb):
    """Log text is a proto string: U+0000 and other control characters are valid and must not truncate it."""
    pb = logs_pb
    key = app_key(pb)
    texts = ["a\x00b", "\x00leading", "tab\tbell\x07esc\x1b[31mred", "trailing\x00"]
    append_texts(stub, pb, key, texts)
    assert [l.text for l in query_all(stub, pb, key)] == texts
    # The same for every string field: a token starting with U+0000 is not the empty (first-page) token.
    with pytest.raises(grpc.RpcError) as info:
        stub.Query(pb[0].QueryRequest(stream=key, page_token="\x00garbage"), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_per_stream_order_with_concurrent_writers(channel, stub, logs_pb):
    """Three writers on one stream and one each on their own: every stream's seqs are 1..N, strictly
    increasing with non-decreasing timestamps, and each writer's lines keep its order."""
    pb = logs_pb
    env = unique("env")
    shared = app_key(pb, env, "shared")
    own = [app_key(pb, env, f"own{w}") for w in range(3)]
    acked = {w: [] for w in range(3)}
    errors = []

    def writer(w):
        try:
            appender = Appender(pb[1].LogsStub(channel), pb)
            for b in range(20):
                lines = [line(pb, shared, f"w{w}-{b}-{i}") for i in range(25)] + [line(pb, own[w], f"o{w}-{b}-{i}") for i in range(5)]
                response = appender.send(lines)
                acked[w].append((appender.range_of(response, shared), appender.range_of(response, own[w])))
            appender.close()
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors

    lines = query_all(stub, pb, shared)
    assert [l.seq for l in lines] == list(range(1, 1501))
    assert all(a.timestamp_nanos <= b.timestamp_nanos for a, b in zip(lines, lines[1:])), "timestamps go backwards"
    by_seq = {l.seq: l.text for l in lines}
    for w in range(3):
        texts = [l.text for l in lines if l.text.startswith(f"w{w}-")]
        assert texts == [f"w{w}-{b}-{i}" for b in range(20) for i in range(25)]
        # Acknowledged ranges hold exactly that writer's lines, and each writer's ranges increase.
        previous = 0
        for b, ((first, last), _) in enumerate(acked[w]):
            assert first > previous
            previous = last
            assert [by_seq[s] for s in range(first, last + 1)] == [f"w{w}-{b}-{i}" for i in range(25)]
        own_lines = query_all(stub, pb, own[w])
        assert [l.seq for l in own_lines] == list(range(1, 101))
        assert [l.text for l in own_lines] == [f"o{w}-{b}-{i}" for b in range(20) for i in range(5)]


def test_long_line_is_split_never_dropped(stub, logs_pb):
    pb = logs_pb
    key = app_key(pb)
    ascii_text = "".join(chr(ord("a") + i % 26) for i in range(40_000))
    utf8_text = "é€😀" * 5000  # 2+3+4 bytes: splits must fall between characters
    appender = Appender(stub, pb)
    response = appender.send([line(pb, key, "before"), line(pb, key, ascii_text), line(pb, key, utf8_text), line(pb, key, "after")])
    first, last = appender.range_of(response, key)
    appender.close()
    lines = query_all(stub, pb, key)
    assert [l.seq for l in lines] == list(range(first, last + 1))
    assert lines[0].text == "before" and not lines[0].continued
    assert lines[-1].text == "after" and not lines[-1].continued
    # Reassemble: parts of one line are consecutive, all but the last continued=true.
    reassembled, current = [], ""
    for l in lines[1:-1]:
        assert len(l.text.encode()) <= 16384, f"a part of {len(l.text.encode())} bytes exceeds the default maximum"
        current += l.text
        if not l.continued:
            reassembled.append(current)
            current = ""
    assert current == ""
    assert reassembled == [ascii_text, utf8_text]
    assert len(lines) - 2 >= 3 + 3, "40,000 and 45,000 bytes need at least 3 parts each at 16 KiB"
    # Tail delivers the same parts.
    tail = Tailer(stub, pb[0].TailRequest(stream=key, after_seq=0))
    tail.wait_seq(last)
    assert [(l.seq, l.text, l.continued) for l in tail.lines()] == [(l.seq, l.text, l.continued) for l in lines]
    tail.cancel()


# --- Tail --------------------------------------------------------------------------------------------


def test_tail_backlog_then_live_without_gap_or_duplicate(channel, stub, logs_pb):
    pb = logs_pb
    key = app_key(pb)
    _, backlog = append_texts(stub, pb, key, [f"old {i}" for i in range(3000)])
    stop = threading.Event()
    written = {"last": backlog}
    errors = []

    def writer():
        try:
            appender = Appender(pb[1].LogsStub(channel), pb)
            n = 0
            while not stop.is_set() and n < 400:  # bounded: at most 20,000 more lines
                response = appender.send([line(pb, key, f"new {n}-{i}") for i in range(50)])
                written["last"] = appender.range_of(response, key)[1]
                n += 1
            appender.close()
        except Exception as error:  # noqa: BLE001
            errors.append(error)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        # The tail starts while the writer is already appending: the switch from backlog to live happens under load.
        poll(lambda: written["last"] >= backlog + 500, 60, "the writer to get going")
        tail = Tailer(stub, pb[0].TailRequest(stream=key, after_seq=0))
        tail.wait_seq(backlog + 1, timeout=60)
        poll(lambda: written["last"] >= backlog + 5000 or not thread.is_alive(), 120, "5,000 live lines")
    finally:
        stop.set()
        thread.join(timeout=120)
    assert not errors, errors
    final = written["last"]
    tail.wait_seq(final, timeout=60)
    lines = tail.lines()
    tail.cancel()
    assert_contiguous([l.seq for l in lines], 1, final)
    assert [l.text for l in lines[:3000]] == [f"old {i}" for i in range(3000)]
    assert lines[3000].text == "new 0-0"


def test_tail_resume_from_cursor_after_disconnect(stub, logs_pb):
    pb = logs_pb
    key = dep_key(pb)
    append_texts(stub, pb, key, [f"l{i}" for i in range(1000)])
    tail = Tailer(stub, pb[0].TailRequest(stream=key, after_seq=0))
    tail.wait_seq(600)
    tail.cancel()
    seen = tail.lines()
    cursor = seen[-1].seq
    assert_contiguous([l.seq for l in seen], 1, cursor)
    # While disconnected, more lines arrive.
    _, last = append_texts(stub, pb, key, [f"l{i}" for i in range(1000, 1500)])
    resumed = Tailer(stub, pb[0].TailRequest(stream=key, after_seq=cursor))
    resumed.wait_seq(last)
    # ...and more once resumed (live).
    _, last = append_texts(stub, pb, key, [f"l{i}" for i in range(1500, 1700)])
    resumed.wait_seq(last)
    again = resumed.lines()
    resumed.cancel()
    assert_contiguous([l.seq for l in again], cursor + 1, last)
    assert [l.text for l in seen + again] == [f"l{i}" for i in range(1700)]


def test_tail_live_only_skips_the_backlog(stub, logs_pb):
    pb = logs_pb
    key = app_key(pb)
    _, backlog = append_texts(stub, pb, key, [f"old {i}" for i in range(100)])
    tail = Tailer(stub, pb[0].TailRequest(stream=key, live_only=True))
    appender = Appender(stub, pb)
    # Until the tail is registered, lines may pass it by: append until it sees one, then check what it saw.
    last = backlog
    deadline = time.monotonic() + 30
    while not tail.lines():
        assert time.monotonic() < deadline, "the live_only tail received nothing"
        last = appender.range_of(appender.send([line(pb, key, "live")]), key)[1]
        time.sleep(0.02)
    first_seen = tail.lines()[0].seq
    response = appender.send([line(pb, key, f"more {i}") for i in range(50)])
    last = appender.range_of(response, key)[1]
    appender.close()
    tail.wait_seq(last)
    lines = tail.lines()
    tail.cancel()
    assert first_seen > backlog, f"live_only delivered backlog line {first_seen}"
    assert_contiguous([l.seq for l in lines], first_seen, last)


def test_tail_since_nanos(stub, logs_pb):
    pb = logs_pb
    key = app_key(pb)
    append_texts(stub, pb, key, [f"a{i}" for i in range(50)])
    append_texts(stub, pb, key, [f"b{i}" for i in range(50)])
    lines = query_all(stub, pb, key)
    second = lines[50]
    assert lines[49].timestamp_nanos < second.timestamp_nanos, "two acknowledged batches share an ingest time"
    tail = Tailer(stub, pb[0].TailRequest(stream=key, since_nanos=second.timestamp_nanos))
    tail.wait_seq(100)
    got = tail.lines()
    assert_contiguous([l.seq for l in got], 51, 100)
    # ...and live lines after them.
    _, last = append_texts(stub, pb, key, ["c"])
    tail.wait_seq(last)
    tail.cancel()
    assert_contiguous([l.seq for l in tail.lines()], 51, last)


def test_tail_since_nanos_in_the_future_skips_earlier_lines(stub, logs_pb):
    """"From the first line ingested at or after this time": a line ingested before it is not delivered."""
    pb = logs_pb
    key = app_key(pb)
    append_texts(stub, pb, key, ["before"])
    since = time.time_ns() + 2 * 10**9
    future = Tailer(stub, pb[0].TailRequest(stream=key, since_nanos=since))
    witness = Tailer(stub, pb[0].TailRequest(stream=key, after_seq=0))
    _, last = append_texts(stub, pb, key, ["still before"])
    witness.wait_seq(last)
    # Append until a line is ingested at or after `since` (bounded: about 2 s of appends).
    deadline = time.monotonic() + 30
    while True:
        _, last = append_texts(stub, pb, key, ["later"])
        witness.wait_seq(last)
        if witness.lines()[-1].timestamp_nanos >= since:
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    future.wait_seq(last)
    got = future.lines()
    witness.cancel()
    future.cancel()
    early = [(l.seq, l.text, l.timestamp_nanos) for l in got if l.timestamp_nanos < since]
    assert not early, f"Tail since_nanos={since} delivered {len(early)} lines ingested before it: {early[:3]}"


def test_tail_unknown_stream_waits_for_its_first_line(stub, logs_pb):
    pb = logs_pb
    key = dep_key(pb)
    tail = Tailer(stub, pb[0].TailRequest(stream=key, after_seq=0))
    assert not tail.done, "Tail of a stream with no lines yet must wait, not fail"
    append_texts(stub, pb, key, ["first", "second"])
    tail.wait_seq(2)
    assert [(l.seq, l.text) for l in tail.lines()] == [(1, "first"), (2, "second")]
    assert tail.error is None
    tail.cancel()


def test_tail_filters(stub, logs_pb):
    pb = logs_pb
    P = pb[0]
    key = app_key(pb)
    texts, sent = [], []
    levels = [P.TRACE, P.DEBUG, P.INFO, P.WARN, P.ERROR]
    for i in range(300):
        level = levels[i % 5]
        instance = f"i-{i % 3}"
        text = f"line {i}" + (" needle" if i % 7 == 0 else "")
        sent.append((i, level, instance, text))
    appender = Appender(stub, pb)
    for i in range(0, 300, 60):
        appender.send([line(pb, key, t, level=lv, instance=ins) for (_, lv, ins, t) in sent[i:i + 60]])
    # The sentinel matches every filter below: once a tail has it, it has everything before it.
    appender.send([line(pb, key, "sentinel needle", level=P.ERROR, instance="i-1")])
    appender.close()
    sent.append((300, P.ERROR, "i-1", "sentinel needle"))
    cases = {
        "min_level WARN": (P.Filter(min_level=P.WARN), lambda lv, ins, t: lv >= P.WARN),
        "contains needle": (P.Filter(contains="needle"), lambda lv, ins, t: "needle" in t),
        "instance i-1": (P.Filter(instance_id="i-1"), lambda lv, ins, t: ins == "i-1"),
        "all three": (P.Filter(min_level=P.INFO, contains="needle", instance_id="i-1"),
                      lambda lv, ins, t: lv >= P.INFO and "needle" in t and ins == "i-1"),
        "none": (P.Filter(), lambda lv, ins, t: True),
    }
    for name, (flt, keep) in cases.items():
        expected = [t for (_, lv, ins, t) in sent if keep(lv, ins, t)]
        assert expected[-1] == "sentinel needle"
        tail = Tailer(stub, P.TailRequest(stream=key, after_seq=0, filter=flt))
        tail.wait_text("sentinel needle")
        got = [l.text for l in tail.lines()]
        tail.cancel()
        assert got == expected, f"filter {name}: got {len(got)} lines, expected {len(expected)}"
        # Query applies the same filter.
        assert [l.text for l in query_all(stub, pb, key, filter=flt)] == expected, f"Query with filter {name}"
    # contains is case-sensitive; live lines are filtered too.
    tail = Tailer(stub, P.TailRequest(stream=key, after_seq=0, filter=P.Filter(contains="Needle", min_level=P.WARN)))
    append_texts(stub, pb, key, ["a Needle", "b needle"], level=P.WARN)
    append_texts(stub, pb, key, ["c Needle"], level=P.INFO)
    append_texts(stub, pb, key, ["d Needle"], level=P.ERROR)
    tail.wait_text("d Needle")
    assert [l.text for l in tail.lines()] == ["a Needle", "d Needle"]
    tail.cancel()


def test_slow_subscriber_gets_everything_and_does_not_slow_the_writer(logs_pb):
    """A tail that reads nothing while 20,000 lines are appended (window of 100 lines in memory),
    then reads: every line, in order. The writer's acknowledgements kept coming meanwhile."""
    pb = logs_pb
    srv = LogsServer(flags=["--logs-window-lines", "100"])
    try:
        with make_channel(srv) as ch:
            stub = pb[1].LogsStub(ch)
            key = app_key(pb)
            appender = Appender(stub, pb)
            appender.send([line(pb, key, "first")])
            slow = stub.Tail(pb[0].TailRequest(stream=key, after_seq=0), timeout=240)
            assert next(slow).line.seq == 1  # the subscriber is live, then stops reading
            fast = Tailer(stub, pb[0].TailRequest(stream=key, after_seq=0))
            ack_times = []
            started = time.monotonic()
            for b in range(200):
                t0 = time.monotonic()
                response = appender.send([line(pb, key, f"l{b * 100 + i} " + "x" * 80) for i in range(100)])
                ack_times.append(time.monotonic() - t0)
                assert appender.range_of(response, key) == (2 + b * 100, 101 + b * 100)
            write_seconds = time.monotonic() - started
            appender.close()
            # The writer was not held back by the subscriber that reads nothing.
            assert max(ack_times) < 2.0, f"a batch took {max(ack_times):.2f} s to be acknowledged"
            assert write_seconds < 60, f"20,000 lines took {write_seconds:.1f} s"
            fast.wait_seq(20_001, timeout=60)
            fast.cancel()
            # Now the slow one reads everything.
            seqs, texts = [1], ["first"]
            deadline = time.monotonic() + 120
            for item in slow:
                assert item.WhichOneof("item") == "line", f"unexpected {item}"
                seqs.append(item.line.seq)
                texts.append(item.line.text)
                if item.line.seq >= 20_001 or time.monotonic() > deadline:
                    break
            slow.cancel()
            assert_contiguous(seqs, 1, 20_001)
            assert texts[1:] == [f"l{i} " + "x" * 80 for i in range(20_000)]
            assert health_status(srv) == health_pb2.HealthCheckResponse.SERVING
    finally:
        srv.cleanup()


# --- durability ----------------------------------------------------------------------------------------


def test_kill9_during_appends_keeps_every_acknowledged_line(logs_pb):
    pb = logs_pb
    srv = LogsServer()
    try:
        key = app_key(pb)
        other = dep_key(pb)
        acked = {}  # seq -> text, for acknowledged lines only
        acked_other = {}
        sent_after_ack = []
        state = {"acked": 0, "stop": False}
        errors = []

        def writer():
            ch = make_channel(srv)
            try:
                appender = Appender(pb[1].LogsStub(ch), pb, timeout=120)
                b = 0
                while not state["stop"] and b < 10_000:
                    texts = [f"b{b}-{i}" for i in range(50)]
                    sent_after_ack.append(texts)
                    response = appender.send([line(pb, key, t) for t in texts] + [line(pb, other, f"o{b}")])
                    first, last = appender.range_of(response, key)
                    acked.update(zip(range(first, last + 1), texts))
                    acked_other[appender.range_of(response, other)[0]] = f"o{b}"
                    state["acked"] = last
                    b += 1
            except (grpc.RpcError, StopIteration) as error:
                errors.append(error)
            finally:
                ch.close()

        thread = threading.Thread(target=writer)
        thread.start()
        poll(lambda: state["acked"] >= 5000 or not thread.is_alive(), 120, "5,000 acknowledged lines")
        assert thread.is_alive(), f"the writer stopped early: {errors}"
        srv.kill9()  # mid-stream: the writer has batches in flight
        thread.join(timeout=60)
        state["stop"] = True
        assert errors, "the writer did not notice the kill"
        last_acked = max(acked)

        srv.start()  # same data directory
        with make_channel(srv) as ch:
            stub = pb[1].LogsStub(ch)
            lines = query_all(stub, pb, key)
            stored = {l.seq: l.text for l in lines}
            assert [l.seq for l in lines] == list(range(1, len(lines) + 1)), "seqs after recovery are not 1..N"
            missing = [s for s in acked if stored.get(s) != acked[s]]
            assert not missing, f"{len(missing)} acknowledged lines lost or changed after kill -9 (first {missing[:5]})"
            top = lines[-1].seq
            assert top >= last_acked
            # Lines beyond the last acknowledgement may exist, but only whole prefixes of what was sent.
            sent_texts = [t for batch in sent_after_ack for t in batch]
            assert [l.text for l in lines] == sent_texts[:len(lines)]
            others = query_all(stub, pb, other)
            assert all({l.seq: l.text for l in others}.get(s) == t for s, t in acked_other.items())
            # Sequence numbers continue after the last stored line.
            appender = Appender(stub, pb)
            assert appender.range_of(appender.send([line(pb, key, "after restart")]), key) == (top + 1, top + 1)
            appender.close()
            info = streams_by_key(stub, pb)[key_tuple(key)]
            assert (info.first_seq, info.last_seq) == (1, top + 1)
            tail = Tailer(stub, pb[0].TailRequest(stream=key, after_seq=top - 10))
            tail.wait_seq(top + 1)
            assert_contiguous([l.seq for l in tail.lines()], top - 9, top + 1)
            tail.cancel()
    finally:
        srv.cleanup()


def test_sigterm_then_restart_keeps_lines(logs_pb):
    pb = logs_pb
    srv = LogsServer()
    try:
        key = dep_key(pb)
        with make_channel(srv) as ch:
            append_texts(pb[1].LogsStub(ch), pb, key, [f"t{i}" for i in range(250)])
        srv.stop()
        assert srv.proc.returncode == 0, f"SIGTERM exit code {srv.proc.returncode}"
        srv.start()
        with make_channel(srv) as ch:
            stub = pb[1].LogsStub(ch)
            assert [l.text for l in query_all(stub, pb, key)] == [f"t{i}" for i in range(250)]
            assert append_texts(stub, pb, key, ["next"]) == (251, 251)
    finally:
        srv.cleanup()


# --- retention -----------------------------------------------------------------------------------------


def test_retention_keeps_last_deployments_per_service(logs_pb):
    pb = logs_pb
    srv = LogsServer(flags=["--logs-retention-deployments-per-service", "2", "--logs-retention-interval", "1"])
    try:
        with make_channel(srv) as ch:
            stub = pb[1].LogsStub(ch)
            deployments = [dep_key(pb, "prod", f"d{i}") for i in range(1, 5)]
            for k in deployments:  # created (and last written) in this order: d1 oldest
                append_texts(stub, pb, k, [f"{k.deployment_id} line {i}" for i in range(20)])
            staging = dep_key(pb, "staging", "d1")
            append_texts(stub, pb, staging, ["staging"])
            app = app_key(pb, "prod", "web")
            append_texts(stub, pb, app, ["app line"])

            def prod_deployments():
                return sorted(k[1] for k in streams_by_key(stub, pb) if k[0] == "prod" and k[1])

            poll(lambda: prod_deployments() == ["d3", "d4"], 30, f"only d3, d4 left in prod (have {prod_deployments()})", every=0.2)
            infos = streams_by_key(stub, pb)
            assert key_tuple(staging) in infos, "another environment's deployment was removed"
            assert key_tuple(app) in infos, "application logs are not deployment streams"
            assert [l.text for l in query_all(stub, pb, deployments[3])] == [f"d4 line {i}" for i in range(20)]
            assert query_all(stub, pb, deployments[0]) == []
            # A new deployment pushes out the oldest remaining one.
            d5 = dep_key(pb, "prod", "d5")
            append_texts(stub, pb, d5, ["d5"])
            poll(lambda: prod_deployments() == ["d4", "d5"], 30, f"only d4, d5 left (have {prod_deployments()})", every=0.2)
            assert health_status(srv) == health_pb2.HealthCheckResponse.SERVING
    finally:
        srv.cleanup()


def test_retention_by_age_and_dropped_marker(logs_pb):
    pb = logs_pb
    srv = LogsServer(flags=["--logs-retention-max-age", "2", "--logs-retention-interval", "1", "--logs-segment-bytes", "4096"])
    try:
        with make_channel(srv) as ch:
            stub = pb[1].LogsStub(ch)
            key = app_key(pb)
            # Old lines over many small segments.
            append_texts(stub, pb, key, [f"old {i} " + "y" * 60 for i in range(500)], batch=50)
            # A subscriber that read up to seq 10 and then stopped reading.
            behind = stub.Tail(pb[0].TailRequest(stream=key, after_seq=0), timeout=300)
            assert [next(behind).line.seq for _ in range(10)] == list(range(1, 11))
            # Keep the stream alive with fresh lines until retention removed the old segments.
            appender = Appender(stub, pb)
            state = {"n": 0}

            def first_retained():
                state["n"] += 1
                appender.send([line(pb, key, f"fresh {state['n']}")])
                info = streams_by_key(stub, pb).get(key_tuple(key))
                return info is not None and info.first_seq > 100 and info.first_seq

            retained = poll(first_retained, 60, "age retention to remove old segments", every=0.25)
            assert retained > 100
            # A reader resuming from a cursor older than what was kept: the marker, then the first retained line.
            resumed = stub.Tail(pb[0].TailRequest(stream=key, after_seq=10), timeout=60)
            first = next(resumed)
            assert first.WhichOneof("item") == "dropped", f"expected a dropped marker, got {first}"
            d = first.dropped
            assert d.first_seq == 11 and d.last_seq >= retained - 1 and d.count == d.last_seq - d.first_seq + 1, d
            after = next(resumed)
            assert after.WhichOneof("item") == "line" and after.line.seq == d.last_seq + 1
            resumed.cancel()
            # From the beginning (after_seq 0): the first retained line, after a marker for 1.. if one is sent.
            fresh = stub.Tail(pb[0].TailRequest(stream=key, after_seq=0), timeout=60)
            first = next(fresh)
            if first.WhichOneof("item") == "dropped":
                assert first.dropped.first_seq == 1 and first.dropped.last_seq >= retained - 1, first
                assert next(fresh).line.seq == first.dropped.last_seq + 1
            else:
                assert first.line.seq >= retained, first
            fresh.cancel()
            # Query starts at the first retained line.
            page = stub.Query(pb[0].QueryRequest(stream=key, page_size=10), timeout=10)
            assert page.lines[0].seq > 100
            # The subscriber that stopped reading at seq 10 is behind retention too: when it reads on, it
            # gets every line still queued for it and, where lines were removed under it, a dropped marker;
            # never a gap without a marker.
            expected = 11
            deadline = time.monotonic() + 60
            top = streams_by_key(stub, pb)[key_tuple(key)].last_seq
            for item in behind:
                if item.WhichOneof("item") == "dropped":
                    assert item.dropped.first_seq == expected, (item, expected)
                    expected = item.dropped.last_seq + 1
                else:
                    assert item.line.seq == expected, f"gap without a dropped marker: got {item.line.seq}, expected {expected}"
                    expected += 1
                if expected > top or time.monotonic() > deadline:
                    break
            behind.cancel()
            appender.close()
            assert expected > top, f"the behind subscriber stopped at {expected} of {top}"
    finally:
        srv.cleanup()


def test_retention_by_total_bytes(logs_pb):
    pb = logs_pb
    srv = LogsServer(flags=["--logs-retention-max-bytes", "40000", "--logs-retention-interval", "1", "--logs-segment-bytes", "4096"])
    try:
        with make_channel(srv) as ch:
            stub = pb[1].LogsStub(ch)
            key = app_key(pb)
            _, last = append_texts(stub, pb, key, [f"line {i} " + "z" * 90 for i in range(2000)], batch=50)

            def trimmed():
                info = streams_by_key(stub, pb)[key_tuple(key)]
                return info.first_seq > 1 and info.bytes <= 40000 + 8192 and info

            info = poll(trimmed, 30, "byte retention to remove the oldest segments", every=0.2)
            assert info.last_seq == last, "retention removed the newest lines"
            lines = query_all(stub, pb, key)
            assert [l.seq for l in lines] == list(range(info.first_seq, last + 1)), "retention must remove the oldest lines first"
    finally:
        srv.cleanup()


# --- Query ---------------------------------------------------------------------------------------------


def test_query_paging_time_range_and_filters(stub, logs_pb):
    pb = logs_pb
    P = pb[0]
    key = dep_key(pb)
    appender = Appender(stub, pb)
    appender.send([line(pb, key, f"q{i}", level=P.INFO, instance="a") for i in range(50)])
    appender.send([line(pb, key, f"q{i}", level=P.ERROR if i % 2 else P.INFO, instance="b" if i % 3 == 0 else "a") for i in range(50, 150)])
    appender.send([line(pb, key, f"q{i}", level=P.INFO, instance="a") for i in range(150, 250)])
    appender.close()

    # Pages of 100: 100, 100, 50, then no token.
    pages, token = [], ""
    for _ in range(10):
        response = stub.Query(P.QueryRequest(stream=key, page_size=100, page_token=token), timeout=10)
        pages.append([l.seq for l in response.lines])
        token = response.next_page_token
        if not token:
            break
    assert [len(p) for p in pages] == [100, 100, 50]
    assert sum(pages, []) == list(range(1, 251))
    # page_size 0 means 100.
    response = stub.Query(P.QueryRequest(stream=key), timeout=10)
    assert len(response.lines) == 100 and response.next_page_token
    # A page that holds the rest ends with no token.
    response = stub.Query(P.QueryRequest(stream=key, page_size=1000), timeout=10)
    assert len(response.lines) == 250 and response.next_page_token == ""

    lines = query_all(stub, pb, key)
    ts = {l.seq: l.timestamp_nanos for l in lines}
    assert ts[50] < ts[51] and ts[150] < ts[151]
    # The second batch by ingest time.
    middle = query_all(stub, pb, key, page_size=7, since_nanos=ts[51], until_nanos=ts[151] - 1)
    assert [l.seq for l in middle] == list(range(51, 151))
    assert [l.seq for l in query_all(stub, pb, key, since_nanos=ts[151])] == list(range(151, 251))
    assert [l.seq for l in query_all(stub, pb, key, until_nanos=ts[51] - 1)] == list(range(1, 51))
    # Filters, across pages.
    errors = query_all(stub, pb, key, page_size=10, filter=P.Filter(min_level=P.ERROR))
    assert [l.text for l in errors] == [f"q{i}" for i in range(50, 150) if i % 2]
    b_lines = query_all(stub, pb, key, page_size=3, filter=P.Filter(instance_id="b"))
    assert [l.text for l in b_lines] == [f"q{i}" for i in range(50, 150) if i % 3 == 0]
    assert [l.text for l in query_all(stub, pb, key, filter=P.Filter(contains="q24"))] == ["q24"] + [f"q{i}" for i in range(240, 250)]
    # A stream with nothing: an empty page, no token.
    empty = stub.Query(P.QueryRequest(stream=dep_key(pb)), timeout=10)
    assert list(empty.lines) == [] and empty.next_page_token == ""


# --- bad input --------------------------------------------------------------------------------------


def expect_status(code, call, *fields):
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert info.value.code() == code, f"expected {code}, got {info.value.code()}: {info.value.details()}"
    details = info.value.details() or ""
    for field in fields:
        assert field in details, f"the message {details!r} does not name {field}"
    return details


BAD_KEYS = [
    ("no environment", dict(service_id="web"), "environment_id"),
    ("neither deployment nor service", dict(environment_id="prod"), "deployment_id"),
    ("both deployment and service", dict(environment_id="prod", deployment_id="d1", service_id="web"), "service_id"),
    ("slash in service", dict(environment_id="prod", service_id="we/b"), "service_id"),
    ("space in environment", dict(environment_id="pr od", service_id="web"), "environment_id"),
    ("129 characters", dict(environment_id="prod", deployment_id="d" * 129), "deployment_id"),
    ("non-ASCII", dict(environment_id="prød", deployment_id="d1"), "environment_id"),
]


@pytest.mark.parametrize("name,fields,field", BAD_KEYS, ids=[b[0] for b in BAD_KEYS])
def test_bad_stream_key_is_invalid_argument(server, stub, logs_pb, name, fields, field):
    P = logs_pb[0]
    key = P.StreamKey(**fields)
    INVALID = grpc.StatusCode.INVALID_ARGUMENT
    expect_status(INVALID, lambda: list(stub.Append(iter([P.AppendRequest(batch_id=1, lines=[P.LogLine(stream=key, text="x")])]), timeout=10)), field)
    expect_status(INVALID, lambda: next(stub.Tail(P.TailRequest(stream=key, after_seq=0), timeout=10)), field)
    expect_status(INVALID, lambda: stub.Query(P.QueryRequest(stream=key), timeout=10), field)
    assert health_status(server) == health_pb2.HealthCheckResponse.SERVING


def test_valid_edge_ids_are_accepted(stub, logs_pb):
    pb = logs_pb
    key = pb[0].StreamKey(environment_id="A.z_0-9", deployment_id="d" * 128)
    assert append_texts(stub, pb, key, ["ok"]) == (1, 1)


def test_bad_requests_give_statuses_and_the_service_stays_up(server, stub, logs_pb):
    pb = logs_pb
    P = pb[0]
    key = app_key(pb)
    INVALID = grpc.StatusCode.INVALID_ARGUMENT
    # An empty batch, alone and after a good one on the same call (the good one is acknowledged first).
    expect_status(INVALID, lambda: list(stub.Append(iter([P.AppendRequest(batch_id=7)]), timeout=10)))
    good_then_empty = stub.Append(iter([P.AppendRequest(batch_id=1, lines=[line(pb, key, "ok")]), P.AppendRequest(batch_id=2)]), timeout=10)
    assert next(good_then_empty).batch_id == 1
    expect_status(INVALID, lambda: next(good_then_empty))
    # A line with no stream.
    expect_status(INVALID, lambda: list(stub.Append(iter([P.AppendRequest(batch_id=1, lines=[P.LogLine(text="x")])]), timeout=10)), "stream")
    # Query limits and tokens.
    expect_status(INVALID, lambda: stub.Query(P.QueryRequest(stream=key, page_size=5000), timeout=10), "page_size")
    expect_status(INVALID, lambda: stub.Query(P.QueryRequest(stream=key, page_size=1001), timeout=10), "page_size")
    assert len(stub.Query(P.QueryRequest(stream=key, page_size=1000), timeout=10).lines) == 1
    for token in ["garbage", "after:", "after:-1", "after:abc", "x" * 5000]:
        expect_status(INVALID, lambda: stub.Query(P.QueryRequest(stream=key, page_token=token), timeout=10), "page_token")
    # Tail and Query without a stream.
    expect_status(INVALID, lambda: next(stub.Tail(P.TailRequest(after_seq=0), timeout=10)), "stream")
    expect_status(INVALID, lambda: stub.Query(P.QueryRequest(), timeout=10), "stream")
    # Undecodable bytes on every method: an error status, not a crash.
    with server.channel() as raw_channel:
        for method in ["Query", "ListStreams", "Tail"]:
            if method == "Tail":
                raw = raw_channel.unary_stream(f"/slipway.logs.v1.Logs/{method}")
                call = lambda: next(raw(b"\xff\xff\xff\xff", timeout=10))  # noqa: E731
            else:
                raw = raw_channel.unary_unary(f"/slipway.logs.v1.Logs/{method}")
                call = lambda: raw(b"\xff\xff\xff\xff", timeout=10)  # noqa: E731
            with pytest.raises(grpc.RpcError) as info:
                call()
            assert info.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL), info.value
    # Still serving and still working.
    assert health_status(server) == health_pb2.HealthCheckResponse.SERVING
    assert server.alive()
    assert append_texts(stub, pb, key, ["still here"])[0] >= 2
    assert streams_by_key(stub, pb)[key_tuple(key)].last_seq >= 2


def test_list_streams_reports_ranges_and_bytes(stub, logs_pb):
    pb = logs_pb
    env = unique("env")
    keys = [app_key(pb, env, "web"), app_key(pb, env, "worker"), dep_key(pb, env, "d1")]
    for n, k in enumerate(keys, start=1):
        append_texts(stub, pb, k, [f"x{i}" for i in range(10 * n)])
    infos = streams_by_key(stub, pb)
    for n, k in enumerate(keys, start=1):
        info = infos[key_tuple(k)]
        assert (info.first_seq, info.last_seq) == (1, 10 * n)
        assert info.bytes >= sum(len(f"x{i}") for i in range(10 * n))
    assert infos[key_tuple(keys[2])].bytes > infos[key_tuple(keys[0])].bytes


def test_a_corrupt_record_on_disk_costs_only_its_line_and_is_reported(logs_pb):
    pb = logs_pb
    srv = LogsServer()
    try:
        key = app_key(pb)
        with make_channel(srv) as ch:
            appender = Appender(pb[1].LogsStub(ch), pb)
            for i in range(20):
                appender.send([line(pb, key, f"line-{i:02d}")])
            appender.close()
        srv.kill9()
        # A bit flips in line 8's record: its checksum no longer matches; everything around it is intact.
        segments = [os.path.join(root, name) for root, _, names in os.walk(os.path.join(srv.data_dir, "logs")) for name in names if name.endswith(".log")]
        path = next(p for p in segments if b"line-07" in open(p, "rb").read())
        data = bytearray(open(path, "rb").read())
        data[data.index(b"line-07")] ^= 0xFF
        with open(path, "wb") as f:
            f.write(data)
        srv.start()
        with make_channel(srv) as ch:
            stub = pb[1].LogsStub(ch)
            lines = query_all(stub, pb, key)
            assert [l.seq for l in lines] == list(range(1, 21))
            assert [l.text for l in lines if l.text.startswith("line-")] == [f"line-{i:02d}" for i in range(20) if i != 7]
            assert "corrupt on disk" in lines[7].text and lines[7].level == pb[0].WARN
            # It goes on from there.
            appender = Appender(stub, pb)
            assert appender.range_of(appender.send([line(pb, key, "after")]), key) == (21, 21)
            appender.close()
        with open(srv.stderr.name) as f:
            assert "corrupt on disk" in f.read()
    finally:
        srv.cleanup()

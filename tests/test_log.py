"""log.py as plain objects: the request trace, its id in log lines, the access-log ring."""
import asyncio
import io
import json
import logging

from velollmd.log import (
    AccessLog,
    JSONFormatter,
    RequestTrace,
    begin_request,
    current_request_id,
    direct_handler,
    setup_logging,
)


def test_overhead_is_total_minus_upstream_minus_queue_wait():
    trace = RequestTrace("r1", "POST", "/v1/chat/completions", started=0.0)
    trace.note_queue_wait(0.25)
    trace.note_queue_wait(0.25)                    # preempted once: both waits count
    trace.note_upstream("b", 1.0)
    trace.total_s = 2.0
    assert trace.overhead_s == 0.5 and trace.backend == "b"


def test_finish_calls_on_done_once_with_the_status():
    seen = []
    trace = RequestTrace("r2")
    trace.on_done = seen.append
    trace.finish(200)
    trace.finish(499)                              # a second finish changes nothing
    assert seen == [trace] and trace.status == 200 and trace.total_s >= 0


def test_log_lines_in_a_request_carry_its_id_and_tasks_started_inside_inherit_it():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JSONFormatter())
    logger = logging.getLogger("velollmd.test_log")
    logger.addHandler(handler)
    logger.propagate = False

    async def in_a_task():
        await asyncio.sleep(0)
        logger.warning("in a task")

    async def main():
        begin_request(RequestTrace("outer-1"))
        logger.warning("inside", extra={"fields": {"n": 1}})
        task = asyncio.create_task(in_a_task())
        begin_request(None)
        await task
        logger.warning("outside")
    try:
        asyncio.run(main())
    finally:
        logger.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(line["msg"], line.get("request_id")) for line in lines] == [
        ("inside", "outer-1"), ("in a task", "outer-1"), ("outside", None)]
    assert lines[0]["n"] == 1 and lines[0]["ts"].endswith("Z") and current_request_id() is None


def test_the_ring_keeps_the_newest_records_and_keys_appear_only_hashed():
    log = AccessLog(enabled=True, ring_size=3)
    for i in range(5):
        trace = RequestTrace(f"r{i}")
        trace.key = log.key_label("sk-secret")
        trace.finish(200)
        log.write(trace)
    records = log.recent()
    assert [r["request_id"] for r in records] == ["r2", "r3", "r4"]
    assert log.recent(1) == records[-1:]
    assert records[0]["key"].startswith("sha256:") and "secret" not in json.dumps(records)
    assert log.key_label("") is None


def test_the_access_line_is_json_of_the_entry_even_with_odd_values():
    trace = RequestTrace('id-1', "POST", '/p"a\\th\n', started=0.0)
    trace.model, trace.backend, trace.cache = "m\u00e9\"x", None, "miss"
    trace.prompt_tokens, trace.completion_tokens = 7, "12"        # a backend's odd usage: no number
    trace.note_upstream("b", 0.5)
    trace.total_s, trace.status = 0.75, 200
    line = json.loads(trace.access_line(1_700_000_000.25))
    assert line.pop("ts") == "2023-11-14T22:13:20.250Z"
    assert (line.pop("level"), line.pop("logger"), line.pop("msg")) == ("info", "velollmd.access", "access")
    assert line == {**trace.entry(), "completion_tokens": None}


def test_the_access_line_bytes_with_every_time_known_and_with_some_unknown():
    """The exact bytes: times with 6 decimals (rounded as format(x, ".6f") rounds), null when
    unknown, milliseconds with 3 digits."""
    known = RequestTrace("0123abcd", "POST", "/v1/chat/completions", started=0.0)
    known.key, known.model, known.backend, known.cache = "team-a", "tiny", "wide", "bypass"
    known.prompt_tokens, known.completion_tokens, known.status = 10, 16, 200
    known.queue_wait_s, known.upstream_s, known.first_byte_s, known.total_s = 0.0000125, 0.0004565, 0.0011, 2
    assert known.access_line(1_700_000_000.25) == (
        '{"ts":"2023-11-14T22:13:20.250Z","level":"info","logger":"velollmd.access","msg":"access",'
        '"request_id":"0123abcd","key":"team-a","method":"POST","path":"/v1/chat/completions","status":200,'
        '"model":"tiny","backend":"wide","cache":"bypass","prompt_tokens":10,"completion_tokens":16,'
        '"queue_wait_s":0.000013,"upstream_s":0.000456,"first_byte_s":0.001100,"total_s":2.000000,'
        '"overhead_s":1.999531}')
    unknown = RequestTrace("r2", "GET", "/x", started=0.0)
    unknown.total_s, unknown.status = 0.0000005, 404
    assert unknown.access_line(1_700_000_000.0999).endswith(
        '"queue_wait_s":0.000000,"upstream_s":null,"first_byte_s":null,"total_s":0.000000,"overhead_s":0.000000}')
    assert unknown.access_line(1_700_000_000.0999).startswith('{"ts":"2023-11-14T22:13:20.099Z",')


def test_the_access_line_skips_the_log_record_only_where_nothing_else_would_see_it():
    """Behind setup_logging's handler alone the line is written straight to it; a handler or
    a filter added anywhere on the way (tests, embedders) gets the record as before. The
    line is the same either way."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    direct, extra = io.StringIO(), io.StringIO()
    try:
        setup_logging("warning", stream=direct)
        access = AccessLog()
        assert direct_handler(access.logger) is root.handlers[0]
        trace = RequestTrace("r9", "POST", "/v1/chat/completions", started=0.0)
        trace.finish(200)
        access.write(trace)
        other = logging.StreamHandler(extra)
        other.setFormatter(JSONFormatter())
        logging.getLogger("velollmd").addHandler(other)
        try:
            assert direct_handler(access.logger) is None
            access.write(trace)
        finally:
            logging.getLogger("velollmd").removeHandler(other)
        first, second = direct.getvalue().splitlines()
        assert json.loads(first)["request_id"] == "r9" and extra.getvalue().splitlines() == [second]
        strip = lambda line: {k: v for k, v in json.loads(line).items() if k != "ts"}   # noqa: E731
        assert strip(first) == strip(second)
        access.logger.addFilter(lambda record: True)
        try:
            assert direct_handler(access.logger) is None
        finally:
            access.logger.filters.clear()
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


class _CountingStream(io.StringIO):
    """Counts the writes that reach it."""

    def __init__(self):
        super().__init__()
        self.num_writes = 0

    def write(self, text: str) -> int:
        self.num_writes += 1
        return super().write(text)


def test_access_lines_of_one_loop_iteration_are_written_together_in_order_and_none_lost_at_stop():
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    stream = _CountingStream()

    def trace(i: int) -> RequestTrace:
        t = RequestTrace(f"r{i}", "POST", "/v1/chat/completions", started=0.0)
        t.finish(200)
        return t

    async def main():
        access = AccessLog()
        access.start(asyncio.get_running_loop())
        access.write(trace(1))
        access.write(trace(2))
        waiting = stream.getvalue()
        await asyncio.sleep(0)                     # the iteration ends: both lines, one write
        after_turn = (stream.getvalue().count("\n"), stream.num_writes)
        access.write(trace(3))
        logging.getLogger("velollmd.test").warning("between")      # the waiting line goes first
        access.write(trace(4))
        access.stop()                              # a clean stop writes what waits
        return waiting, after_turn

    try:
        setup_logging("warning", stream=stream)
        waiting, after_turn = asyncio.run(main())
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
    assert waiting == "" and after_turn == (2, 1)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line.get("request_id") or line["msg"] for line in lines] == ["r1", "r2", "r3", "between", "r4"]

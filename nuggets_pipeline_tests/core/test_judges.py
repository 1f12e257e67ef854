"""The judge layer: verdict parsing, prompts, the OpenAI backend over real HTTP, the local backend, the cache
and calibration. The HTTP tests talk to a chat-completions server started on 127.0.0.1 by the test itself."""

from __future__ import annotations

import base64
import binascii
import contextlib
import copy
import dataclasses
import json
import math
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote_plus

import pytest
import torch

from nuggets_pipeline.core.judging import (
    BothOrders,
    JudgmentCache,
    LocalJudge,
    OpenAIJudge,
    PairRequest,
    PointwiseRequest,
    RawOutput,
    SingleRequest,
    calibrate_judge,
    calibration_sample,
    compare_both_orders,
    compare_pair,
    grade_single,
    make_judge,
    mt_bench_prompt,
    pair_prompt,
    parse_pair,
    parse_rating,
    pointwise_prompt,
    rate_pointwise,
    read_distribution,
    wilson_interval,
)
from nuggets_pipeline.core.judging.types import Judgment
from nuggets_pipeline.core.modeling import encode

SECRET = "sk-test-0123456789-do-not-leak"
KEY_ENV = "NUGGETS_TEST_JUDGE_KEY"
QUESTION = SingleRequest(questions=("What is the capital of France?",), answers=("Paris.",))


def tally(judgments: Sequence[Judgment]) -> dict[str, int]:
    """The counts a report gives beside a judge-based metric: how many verdicts exist, why the others do not."""
    return {
        "n": len(judgments),
        "parsed": sum(j.parsed for j in judgments),
        "unparseable": sum(j.unparseable for j in judgments),
        "failed": sum(j.failed for j in judgments),
        "cached": sum(j.cached for j in judgments),
    }


# ---------------------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is correct. Rating: [[7]]", 7.0),
        ("Rating: [[ 7.5 ]]", 7.5),
        ("Rating: [10]", 10.0),  # FastChat's single-bracket fallback
        ("[[3]] as said: [[3]]", 3.0),
        ("Rating: [[1]]", 1.0),
    ],
)
def test_parse_rating_reads_bracketed_ratings(text: str, expected: float) -> None:
    assert parse_rating(text) == (expected, None)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("Rating: [[11]]", "outside 1-10"),
        ("Rating: [[0]]", "outside 1-10"),
        ("I would give it a 7 out of 10.", "no [[rating]]"),
        ("", "empty"),
        ("   \n", "empty"),
        (None, "empty"),
        ("First [[4]], on reflection [[8]]", "conflicting"),
        ('Format: "[[rating]]"', "no [[rating]]"),
    ],
)
def test_parse_rating_refuses_malformed_output(text: str | None, reason: str) -> None:
    value, error = parse_rating(text)
    assert value is None
    assert reason in error


@pytest.mark.parametrize(("text", "expected"), [("Verdict: [[A]]", 1.0), ("[[ B ]]", 0.0), ("It is a tie: [[C]]", 0.5)])
def test_parse_pair_reads_verdicts(text: str, expected: float) -> None:
    assert parse_pair(text) == (expected, None)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("[[A]] ... actually [[B]]", "conflicting"),
        ("Assistant A is better.", "no [[A]]"),
        ("[A]", "no [[A]]"),
        ("", "empty"),
    ],
)
def test_parse_pair_refuses_malformed_output(text: str, reason: str) -> None:
    value, error = parse_pair(text)
    assert value is None
    assert reason in error


def test_distribution_merges_spaced_tokens_and_renormalises() -> None:
    top = {"8": math.log(0.4), " 8": math.log(0.1), "9": math.log(0.25), "Hello": math.log(0.25)}
    value, error = read_distribution("rating", RawOutput(top_logprobs=top))
    assert error is None
    assert value == pytest.approx((8 * 0.5 + 9 * 0.25) / 0.75)


def test_distribution_counts_a_whole_ten_token_as_ten() -> None:
    top = {"10": math.log(0.5), "1": math.log(0.5)}
    assert read_distribution("rating", RawOutput(top_logprobs=top))[0] == pytest.approx(5.5)


def test_distribution_pair_and_missing_labels() -> None:
    top = {"A": math.log(0.6), "B": math.log(0.2), "C": math.log(0.2)}
    assert read_distribution("pair", RawOutput(top_logprobs=top))[0] == pytest.approx(0.75)
    value, error = read_distribution("pair", RawOutput(top_logprobs={"The": -0.1, "I": -2.0}))
    assert value is None
    assert "no verdict token" in error


# ---------------------------------------------------------------------------------------------- prompts


def test_mt_bench_prompt_uses_the_fastchat_template_for_each_case() -> None:
    single = mt_bench_prompt(QUESTION, "generate")
    assert single.template == "single-v1"
    assert single.system == "You are a helpful assistant."
    assert "[Question]\nWhat is the capital of France?" in single.user
    assert single.user.endswith("[The End of Assistant's Answer]")
    assert single.verdict_prefix == ""

    math_turn2 = SingleRequest(("1+1?", "Times 3?"), ("2", "6"), turn=2, references=("2", "6"))
    prompt = mt_bench_prompt(math_turn2, "probabilities")
    assert prompt.template == "single-math-v1-multi-turn"
    assert "### Reference answer:\n6" in prompt.user
    assert "### Assistant A:\n6" in prompt.user
    assert prompt.verdict_prefix == "Rating: [["
    assert prompt.user.endswith("as a number from 1 to 10.")
    assert mt_bench_prompt(SingleRequest(("q",), ("a",), references=("r",)), "generate").template == ("single-math-v1")


def test_request_validation() -> None:
    with pytest.raises(ValueError, match="turn 2 needs"):
        SingleRequest(("only one",), ("answer",), turn=2)
    with pytest.raises(ValueError, match="mode"):
        pair_prompt(PairRequest("i", "a", "b"), "vibes")


def test_pair_and_pointwise_prompts() -> None:
    request = PairRequest("Name a colour.", "Blue.", "Seven.")
    shown, swapped = pair_prompt(request, "generate"), pair_prompt(request.swapped(), "generate")
    assert shown.user.index("Blue.") < shown.user.index("Seven.")
    assert swapped.user.index("Seven.") < swapped.user.index("Blue.")
    assert shown.prompt_hash != swapped.prompt_hash
    assert "[[C]]" in shown.user
    assert pair_prompt(request, "probabilities").prompt_hash != shown.prompt_hash
    rating = pointwise_prompt(PointwiseRequest("Name a colour.", "Blue."), "generate")
    assert rating.kind == "rating"
    assert "Rating: [[5]]" in rating.user


# ------------------------------------------------------------------------ an OpenAI-compatible test server


class ChatServer:
    """A /v1/chat/completions server on 127.0.0.1 that records every request it receives.

    ``failures``: status codes answered to the first requests, in order, before serving normally.
    ``reply(body)`` returns the assistant text (generate) or a {token: prob} dict (logprobs requests).
    """

    def __init__(self, reply: Callable[[dict], Any], failures: list[int] | None = None) -> None:
        self.reply = reply
        self.failures = list(failures or [])
        self.requests: list[dict[str, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.gate: threading.Barrier | None = None
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server._lock:
                    server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                    failure = server.failures.pop(0) if server.failures else None
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    if server.gate is not None and not server.gate.broken:
                        server.gate.wait()  # proves requests overlap: a serial client would break it
                    if failure is not None:
                        self._send(failure, {"error": {"message": f"echo {self.headers.get('Authorization')}"}})
                    else:
                        self._send(200, server.completion(body))
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def _send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def completion(self, body: dict) -> dict:
        answer = self.reply(body)
        choice: dict[str, Any] = {"index": 0, "finish_reason": "stop"}
        if body.get("logprobs"):
            top = [{"token": t, "logprob": math.log(p), "bytes": None} for t, p in answer.items()]
            choice["message"] = {"role": "assistant", "content": top[0]["token"]}
            choice["logprobs"] = {
                "content": [
                    {
                        "token": top[0]["token"],
                        "logprob": top[0]["logprob"],
                        "top_logprobs": top[: body["top_logprobs"]],
                    }
                ]
            }
        else:
            choice["message"] = {"role": "assistant", "content": answer}
        return {"id": "test", "object": "chat.completion", "model": body["model"], "choices": [choice]}

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve() -> Iterator[Callable[..., ChatServer]]:
    servers: list[ChatServer] = []

    def start(reply: Callable[[dict], Any], failures: list[int] | None = None) -> ChatServer:
        servers.append(ChatServer(reply, failures))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def _user_text(body: dict) -> str:
    return body["messages"][-1]["content"]


def _api_judge(server: ChatServer, mode: str = "generate", **options: Any) -> OpenAIJudge:
    options.setdefault("backoff_s", 0.001)
    return OpenAIJudge("judge-model", mode, base_url=server.base_url, api_key_env=KEY_ENV, **options)


def test_openai_generate_mode_grades_and_compares(serve: Callable[..., ChatServer]) -> None:
    def reply(body: dict) -> str:
        if "Response A" in _user_text(body):
            return "A is clearer. [[A]]"
        return "Good answer. Rating: [[8]]" if "Paris" in _user_text(body) else "Wrong. Rating: [[2]]"

    server = serve(reply)
    judge = _api_judge(server)
    wrong = SingleRequest(QUESTION.questions, ("Berlin.",))
    ratings = grade_single(judge, [QUESTION, wrong])
    assert [j.value for j in ratings] == [8.0, 2.0]
    assert all(j.parsed and j.judge == "judge-model" and j.backend == "openai" for j in ratings)
    assert compare_pair(judge, [PairRequest("Name a colour.", "Blue.", "Seven.")])[0].value == 1.0
    body = server.requests[0]["body"]
    assert server.requests[0]["path"] == "/v1/chat/completions"
    assert body["temperature"] == 0 and body["max_tokens"] == 1024 and "logprobs" not in body
    assert body["messages"][0] == {"role": "system", "content": "You are a helpful assistant."}


def test_openai_probabilities_mode_reads_top_logprobs(serve: Callable[..., ChatServer]) -> None:
    def reply(body: dict) -> dict[str, float]:
        if "Response A" in _user_text(body):
            return {"B": 0.6, "A": 0.2, "The": 0.2}
        return {"8": 0.5, " 9": 0.25, "Hello": 0.25}

    server = serve(reply)
    judge = _api_judge(server, "probabilities")
    [rating] = grade_single(judge, [QUESTION])
    assert rating.value == pytest.approx((8 * 0.5 + 9 * 0.25) / 0.75)
    assert json.loads(rating.raw)["top_logprobs"]["Hello"] == pytest.approx(math.log(0.25))
    [pair] = compare_pair(judge, [PairRequest("i", "a", "b")])
    assert pair.value == pytest.approx(0.25)
    body = server.requests[0]["body"]
    assert (body["logprobs"], body["top_logprobs"], body["max_tokens"], body["temperature"]) == (
        True,
        20,
        1,
        0,
    )
    assert _user_text(body).endswith("Reply with your rating only, as a number from 1 to 10.")


def test_openai_retries_429_and_5xx(serve: Callable[..., ChatServer]) -> None:
    server = serve(lambda body: "Rating: [[6]]", failures=[500, 429, 503])
    requests = [SingleRequest((f"Question {i}?",), ("Answer.",)) for i in range(3)]
    judgments = grade_single(_api_judge(server, concurrency=1), requests)
    assert [j.value for j in judgments] == [6.0, 6.0, 6.0]
    assert len(server.requests) == 3 + 3  # every failure was retried once more


def test_openai_gives_up_after_retries_and_does_not_cache_failures(serve: Callable[..., ChatServer]) -> None:
    server = serve(lambda body: "Rating: [[6]]", failures=[503] * 3)
    judge = _api_judge(server, max_retries=2)
    [failed] = grade_single(judge, [QUESTION])
    assert failed.failed and failed.value is None and not failed.parsed
    assert "3 attempts" in failed.error and "503" in failed.error
    assert len(server.requests) == 3
    [retried] = grade_single(judge, [QUESTION])  # the failure was not cached: this run asks again
    assert retried.value == 6.0 and not retried.cached
    assert len(server.requests) == 4


def test_openai_does_not_retry_a_refused_request(serve: Callable[..., ChatServer]) -> None:
    server = serve(lambda body: "Rating: [[6]]", failures=[400])
    [refused] = grade_single(_api_judge(server), [QUESTION])
    assert refused.failed and "HTTP 400" in refused.error
    assert len(server.requests) == 1


def test_api_key_is_sent_but_never_stored(
    serve: Callable[..., ChatServer], monkeypatch: pytest.MonkeyPatch, isolated_home: Path
) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    # The first request fails with a body echoing the Authorization header, as a careless proxy might.
    server = serve(lambda body: "Rating: [[9]]", failures=[400])
    judge = _api_judge(server)
    [refused] = grade_single(judge, [QUESTION])
    [judged] = grade_single(judge, [QUESTION])
    assert {r["headers"]["Authorization"] for r in server.requests} == {f"Bearer {SECRET}"}
    assert judged.value == 9.0
    assert "***" in refused.error
    for text in (repr(refused), repr(judged), repr(judge), judge.cache_key, repr(vars(judge))):
        assert SECRET not in text
    stored = list(isolated_home.rglob("*"))
    assert any(p.name.startswith("judgments.sqlite") for p in stored)
    for path in stored:
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes()


def test_no_authorization_header_without_a_key(serve: Callable[..., ChatServer]) -> None:
    server = serve(lambda body: "Rating: [[9]]")
    grade_single(_api_judge(server), [QUESTION])
    assert "Authorization" not in server.requests[0]["headers"]


def test_concurrency_limit(serve: Callable[..., ChatServer]) -> None:
    server = serve(lambda body: "Rating: [[5]]")
    server.gate = threading.Barrier(2, timeout=30)
    requests = [SingleRequest((f"Question {i}?",), ("Answer.",)) for i in range(6)]
    judgments = grade_single(_api_judge(server, concurrency=2), requests)
    assert all(j.value == 5.0 for j in judgments)
    assert not server.gate.broken  # two requests were in flight together
    assert server.max_in_flight == 2


# ---------------------------------------------------------------------------------------------- cache


def test_second_run_is_served_from_the_cache(serve: Callable[..., ChatServer]) -> None:
    server = serve(lambda body: "Rating: [[4]]" if "Paris" in _user_text(body) else "No verdict here.")
    judge = _api_judge(server)
    requests = [QUESTION, SingleRequest(QUESTION.questions, ("London.",)), QUESTION]
    first = grade_single(judge, requests)
    assert len(server.requests) == 2  # the duplicate prompt is judged once
    assert [j.value for j in first] == [4.0, None, 4.0]
    assert first[1].unparseable and "no [[rating]]" in first[1].error
    assert tally(first) == {"n": 3, "parsed": 2, "unparseable": 1, "failed": 0, "cached": 0}

    again = grade_single(judge, requests)
    assert len(server.requests) == 2
    assert all(j.cached for j in again)
    assert [(j.value, j.parsed, j.raw, j.error) for j in again] == [(j.value, j.parsed, j.raw, j.error) for j in first]
    # A judge answering in another mode is another judge: nothing is shared.
    other = grade_single(_api_judge(server, max_tokens=64), [QUESTION])
    assert not other[0].cached and len(server.requests) == 3


def test_cache_survives_concurrent_writers(tmp_path: Path) -> None:
    # Several fresh files, because the race that used to fail ("database is locked" while two connections
    # switch a new file to WAL) only shows in about one first-open in ten.
    for trial in range(30):
        path = tmp_path / f"shared-{trial}.sqlite"
        errors: list[BaseException] = []

        def write(worker: int, path: Path = path, errors: list[BaseException] = errors) -> None:
            try:
                with JudgmentCache(path) as cache:  # each writer has its own connection, as separate processes do
                    for i in range(10):
                        judgment = Judgment("j", "local", "probabilities", f"{worker}-{i}", "{}", 5.0, True)
                        cache.put_many("key", [judgment])
            except BaseException as error:  # handed to the test thread, which asserts none
                errors.append(error)

        threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        with JudgmentCache(path) as cache:
            assert cache.count("key") == 40
            assert cache.get_many("key", ["3-9"])["3-9"].cached


# ---------------------------------------------------------------------------------------------- local backend


def test_local_probabilities_mode_gives_values_in_range(tiny_model) -> None:
    judge = LocalJudge(tiny_model, "probabilities", batch_size=2)
    requests = [
        QUESTION,
        SingleRequest(("A much longer question about the history of France?", "And Spain?"), ("x", "y"), turn=2),
        SingleRequest(("2+2?",), ("4",), references=("4",)),
    ]
    ratings = grade_single(judge, requests)
    assert all(j.parsed and 1.0 <= j.value <= 10.0 for j in ratings)
    assert set(json.loads(ratings[0].raw)["candidates"]) == {str(r) for r in range(1, 11)}
    assert ratings[0].judge == "tiny-random-llama" and ratings[0].backend == "local"
    pairs = compare_both_orders(judge, [PairRequest("Name a colour.", "Blue.", "Seven.")])
    assert isinstance(pairs[0], BothOrders)
    assert 0.0 <= pairs[0].forward.value <= 1.0 and 0.0 <= pairs[0].value <= 1.0
    points = rate_pointwise(judge, [PointwiseRequest("Name a colour.", "Blue.")])
    assert 1.0 <= points[0].value <= 10.0


def test_local_batching_does_not_change_values(tiny_model) -> None:
    requests = [QUESTION, SingleRequest(("A far longer question, padded with many more words?",), ("No.",))]
    alone = [grade_single(LocalJudge(tiny_model, batch_size=1), [r])[0].value for r in requests]
    batched = [j.value for j in grade_single(LocalJudge(tiny_model, batch_size=2, name="batched"), requests)]
    assert batched == pytest.approx(alone, abs=1e-4)


def test_local_ten_is_read_with_a_second_token(tiny_model) -> None:
    """The cached two-step reading of "10" equals scoring "1","0" from scratch."""
    judge = LocalJudge(tiny_model)
    prompt = mt_bench_prompt(QUESTION, "probabilities")
    labels = judge.label_tokens(prompt.verdict_prefix, "rating")
    assert labels["10"] == [labels["1"][0], encode(tiny_model.tokenizer, "0")[0]]
    [(_, raw)] = list(judge.run([prompt]))
    ids = encode(tiny_model.tokenizer, judge.render(prompt)) + labels["10"][:1]
    with torch.no_grad():
        logits = tiny_model.model(input_ids=torch.tensor([ids])).logits[0, -2:].float()
    first, second = torch.log_softmax(logits, dim=-1)
    one, zero = labels["10"]
    assert raw.candidates["10"] == pytest.approx((first[one] + second[zero]).item(), abs=1e-4)
    rest = math.log(1.0 - math.exp(second[zero].item()))
    assert raw.candidates["1"] == pytest.approx(first[one].item() + rest, abs=1e-4)


def test_local_generate_mode_never_invents_a_verdict(tiny_model) -> None:
    judge = LocalJudge(tiny_model, "generate", max_new_tokens=8)
    judgments = grade_single(judge, [QUESTION]) + compare_pair(judge, [PairRequest("i", "a", "b")])
    for judgment in judgments:
        assert isinstance(judgment.raw, str)
        assert judgment.unparseable and judgment.value is None and judgment.error
    assert grade_single(judge, [QUESTION])[0].cached


def test_make_judge_defaults(tiny_model) -> None:
    assert make_judge("local", tiny_model).mode == "probabilities"
    assert make_judge("openai", "gpt-4o", base_url="http://127.0.0.1:9/v1").mode == "generate"
    with pytest.raises(ValueError, match="backend"):
        make_judge("carrier-pigeon", "x")


# ---------------------------------------------------------------------------------------------- calibration


def test_calibration_sample_is_balanced_and_seeded() -> None:
    sample = calibration_sample(20, seed=3)
    assert sum(p.gpt4_prefers_reference for p in sample) == 10
    assert len({p.index for p in sample}) == 20
    assert [p.index for p in calibration_sample(20, seed=3)] == [p.index for p in sample]
    assert [p.index for p in calibration_sample(20, seed=4)] != [p.index for p in sample]
    with pytest.raises(ValueError, match="even"):
        calibration_sample(7)


def test_wilson_interval() -> None:
    low, high = wilson_interval(8, 16)
    assert low < 0.5 < high
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(16, 16)[0] > 0.75


@pytest.mark.parametrize("route", ["pairwise", "pointwise"])
def test_calibration_runs_on_the_tiny_model(tiny_model, route: str) -> None:
    judge = LocalJudge(tiny_model, batch_size=4)
    result = calibrate_judge(judge, n=4, seed=0, route=route)
    assert (result.n, result.judged, result.route, result.unparseable, result.failed) == (4, 4, route, 0, 0)
    assert result.ci_low <= result.agreement <= result.ci_high
    assert result.reference_baseline == pytest.approx(584 / 789)
    assert result.near_chance == (result.ci_low <= 0.5 <= result.ci_high)
    assert "tiny-random-llama" in result.summary and "%" in result.summary
    if route == "pairwise":
        assert 0.0 <= result.position_bias <= 1.0 and result.single_order_agreement is not None
    else:
        assert result.position_bias is None and result.single_order_agreement is None


@pytest.mark.slow
def test_smollm2_grades_and_calibrates(smollm2) -> None:
    judge = LocalJudge(smollm2, batch_size=4)
    ratings = grade_single(judge, [QUESTION, SingleRequest(QUESTION.questions, ("Bananas are yellow.",))])
    assert all(j.parsed and 1.0 <= j.value <= 10.0 for j in ratings)
    result = calibrate_judge(judge, n=4, route="pointwise")
    assert result.judged == 4 and result.unparseable == 0


def test_local_render_folds_the_system_turn_when_the_template_refuses_it(tiny_model) -> None:
    tokenizer = copy.deepcopy(tiny_model.tokenizer)
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
        "<user>{{ m['content'] }}</user>{% endfor %}{% if add_generation_prompt %}<model>{% endif %}"
    )
    judge = LocalJudge(dataclasses.replace(tiny_model, tokenizer=tokenizer))
    prompt = mt_bench_prompt(QUESTION, "probabilities")
    text = judge.render(prompt)
    assert text.startswith(f"<user>{prompt.system}\n\n{prompt.user}</user><model>")
    assert text.endswith("<model>Rating: [[")


def _every_header(headers: Mapping[str, str]) -> str:
    echoed = "; ".join(f"{name}: {value}" for name, value in headers.items())
    return ("request was " + echoed + " | ") * 20


class HeaderEchoServer:
    """A server on 127.0.0.1 that refuses every request with a long body echoing every request header, several
    times over, the way a careless proxy's error page might: a 300-character cut falls inside a key.
    ``echo(headers)`` gives another error message (pieces or encodings of a header)."""

    def __init__(self, status: int, echo: Callable[[Mapping[str, str]], str] = _every_header) -> None:
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                server.requests += 1
                data = json.dumps({"error": {"message": echo(self.headers)}}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.parametrize("status", [401, 503])
def test_every_header_value_is_redacted_before_the_error_text_is_cut(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, status: int
) -> None:
    key = "sk-proj-" + "A1b2C3d4E5f6G7h8" * 3
    gateway = "gw-token-" + "Zz9Yy8Xx7Ww6" * 3
    monkeypatch.setenv(KEY_ENV, key)
    monkeypatch.setenv("NUGGETS_TEST_GATEWAY_TOKEN", gateway)
    server = HeaderEchoServer(status)
    try:
        judge = OpenAIJudge(
            "judge-model",
            "generate",
            base_url=server.base_url,
            api_key_env=KEY_ENV,
            header_envs={"X-Gateway-Token": "NUGGETS_TEST_GATEWAY_TOKEN"},
            max_retries=2,
            backoff_s=0.001,
        )
        with caplog.at_level("DEBUG"):
            [failed] = grade_single(judge, [QUESTION], cache=None)
    finally:
        server.close()
    assert failed.failed and f"HTTP {status}" in failed.error and "***" in failed.error
    texts = [failed.error, repr(failed), caplog.text]
    for secret in (key, gateway):
        prefixes = {secret[i : i + 8] for i in range(len(secret) - 7)}  # any 8 characters of it
        for text in texts:
            assert not [p for p in prefixes if p in text], text


def test_redact_removes_whole_and_cut_copies_of_each_secret() -> None:
    from nuggets_pipeline.core.judging.backends import redact

    key = "sk-abcdefghijklmnop"
    text = f"Bearer {key}, again {key[:12]} and {key[:5]}; other {key}"
    assert redact(text, [key, ""]) == "Bearer ***, again *** and sk-ab; other ***"


def windows(secret: str, width: int = 8) -> set[str]:
    """Every piece of ``width`` characters of ``secret``, wherever it starts."""
    return {secret[i : i + width] for i in range(len(secret) - width + 1)}


# "+", "/" and "=" every few characters: its URL-encoding shares no 8-character piece with the key itself.
ODD_KEY = "sk+a1b2/c3d4=e5f6+g7h8/i9j0=k1l2+m3n4/o5p6"


def key_echoes(key: str) -> dict[str, str]:
    """What a careless endpoint may echo of ``Authorization: Bearer <key>``, by name."""
    header = f"Bearer {key}"
    return {
        "characters 12-40": header[12:40],
        "last 20": header[-20:],
        "middle of the key": key[9:30],
        "base64 of the header value": base64.b64encode(header.encode()).decode(),
        "base64 of the header line": base64.b64encode(f"Authorization: {header}".encode()).decode(),
        "base64 of user:key": base64.b64encode(f"user:{key}".encode()).decode(),
        "url-safe base64 of the key": base64.urlsafe_b64encode(key.encode()).decode(),
        "url-encoded header value": quote(header, safe=""),
    }


def decodings(text: str) -> list[str]:
    """``text`` and everything a reader could decode from it: URL-decoded, and every run of base64 characters
    decoded from each of its first 4 characters, in both alphabets (undecodable bytes as Latin-1)."""
    found = [text, unquote_plus(text)]
    for run in re.findall(r"[A-Za-z0-9+/_=-]{8,}", text):
        for start in range(4):
            piece = run[start:].rstrip("=")
            piece = piece[: len(piece) - len(piece) % 4]
            for alphabet in (None, b"-_"):
                with contextlib.suppress(binascii.Error, ValueError):  # not base64 from this offset
                    found.append(base64.b64decode(piece, altchars=alphabet).decode("latin-1"))
    return found


def leaked(key: str, text: str) -> list[str]:
    """The 8-character pieces of ``key`` that ``text`` holds, plainly or in an encoding."""
    return sorted({w for decoded in decodings(text) for w in windows(key) if w in decoded})


def test_redact_removes_every_piece_of_the_key_and_its_encodings() -> None:
    from nuggets_pipeline.core.judging.backends import redact

    for key in ("sk-proj-" + "A1b2C3d4E5f6G7h8" * 3, ODD_KEY):
        for name, echoed in key_echoes(key).items():
            assert leaked(key, echoed), name  # the test can see what it looks for
            text = redact(f"upstream said <{echoed}> at 12:00", [key, f"Bearer {key}"])
            assert text.startswith("upstream said <") and text.endswith("> at 12:00"), (name, text)
            assert not leaked(key, text), (name, text)
    # A short or unrelated text is left as it was.
    assert redact("HTTP 500: internal error", ["sk-abcdefghijklmnop"]) == "HTTP 500: internal error"


@pytest.mark.parametrize("status", [400, 500])
@pytest.mark.parametrize("echo", sorted(key_echoes("k")))
def test_an_endpoint_echoing_pieces_or_encodings_of_the_key_gets_none_stored_or_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, status: int, echo: str
) -> None:
    """Before: only pieces starting with the key's first 8 characters were redacted; a middle or a tail of the key,
    or its base64, reached the WARNING log and ``Judgment.error`` (so the evaluation tables)."""
    key = ODD_KEY
    monkeypatch.setenv(KEY_ENV, key)
    server = HeaderEchoServer(status, lambda headers: f"bad request, header was {key_echoes(key)[echo]} (sorry)")
    try:
        judge = OpenAIJudge(
            "judge-model", "generate", base_url=server.base_url, api_key_env=KEY_ENV, max_retries=1, backoff_s=0.001
        )
        with caplog.at_level("DEBUG"):
            [failed] = grade_single(judge, [QUESTION], cache=None)
    finally:
        server.close()
    assert failed.failed and f"HTTP {status}" in failed.error and "***" in failed.error
    assert server.requests == (2 if status == 500 else 1)  # 5xx retried (and logged), 4xx not
    for text in (failed.error, repr(failed), caplog.text):
        assert not leaked(key, text), text


@pytest.mark.parametrize(
    "url", ["http://user:s3cret-pass-123@127.0.0.1:9/v1", "https://s3cret-pass-123@api.example.com/v1"]
)
def test_a_base_url_with_credentials_is_refused_without_showing_them(url: str) -> None:
    """Before: accepted; every retry warning logged the URL, and httpx sent the userinfo as a Basic header that
    redaction did not know, so an echoing endpoint's reply stored it in the evaluation tables."""
    with pytest.raises(ValueError, match="carries credentials") as refused:
        OpenAIJudge("judge-model", base_url=url)
    message = str(refused.value)
    assert "s3cret-pass-123" not in message and "NUGGETS_JUDGE_API_KEY" in message and "***@" in message


class SilentServer:
    """Accepts every request and never answers (until closed): a judge that hangs."""

    def __init__(self) -> None:
        self.requests = 0
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                server.requests += 1
                server.release.wait(30)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def test_the_judge_resource_sets_timeout_and_retries_and_a_silent_server_fails_fast() -> None:
    """Before: the resource had no timeout_s or max_retries; a judge that never answered held each request for
    6 tries x 120 s."""
    from nuggets_pipeline.defs.resources import JudgeResource

    defaults = JudgeResource(backend="openai", model="judge-model").build()
    assert (defaults.timeout_s, defaults.max_retries) == (60.0, 3)
    server = SilentServer()
    try:
        judge = JudgeResource(
            backend="openai", model="judge-model", base_url=server.base_url, timeout_s=0.3, max_retries=1
        ).build()
        assert (judge.timeout_s, judge.max_retries) == (0.3, 1)
        started = time.monotonic()
        [failed] = grade_single(judge, [QUESTION], cache=None)
        elapsed = time.monotonic() - started
    finally:
        server.close()
    assert failed.failed and "2 attempts" in failed.error and "Timeout" in failed.error
    assert server.requests == 2 and elapsed < 10  # 2 x 0.3 s and a 1 s back-off
    with pytest.raises(ValueError, match="timeout_s"):
        OpenAIJudge("judge-model", timeout_s=0)

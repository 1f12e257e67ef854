"""The whole evaluation path end to end, with the tiny model as both the fine-tuned candidate and the judge."""

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dagster as dg
import pytest

from nuggets_pipeline.core.storage import Warehouse
from nuggets_pipeline.defs.assets.evaluation import AlpacaEvalConfig, CalibrationConfig, LikelihoodConfig, MTBenchConfig
from nuggets_pipeline.defs.resources import JudgeResource
from nuggets_pipeline_tests.materialize import ASSETS, score, select, tiny_resources

SMALL = {
    "finetuned_model": {
        "config": {"max_steps": 1, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1, "max_length": 64}
    },
    "mt_bench_results": {"config": {"questions": 2, "max_new_tokens": 6}},
    "alpaca_eval_results": {"config": {"instructions": 3, "max_new_tokens": 6}},
    "reference_likelihood": {"config": {"alpaca_eval_items": 3, "mt_bench_items": 2}},
    "judge_calibration": {"config": {"n": 4}},
}


def run(instance: dg.DagsterInstance, selection: list[str], partition: str | None = None):
    return dg.materialize(
        ASSETS,
        selection=selection,
        instance=instance,
        resources=tiny_resources(),
        partition_key=partition,
        run_config={"ops": {k: v for k, v in SMALL.items() if k in selection}},
    )


@pytest.mark.slow
def test_evaluation_report_compares_golden_and_random(prepared: dg.DagsterInstance, isolated_home: Path) -> None:
    for shard in prepared.get_dynamic_partitions("candidate_shards"):
        assert score(prepared, shard).success
    assert select(prepared, threshold=None, top_k=4).success
    for variant in ("golden", "random"):
        assert run(
            prepared, ["finetuned_model", "mt_bench_results", "alpaca_eval_results", "reference_likelihood"], variant
        ).success
    assert run(prepared, ["judge_calibration"]).success
    result = run(prepared, ["evaluation_report"])
    assert result.success
    report = result.output_for_node("evaluation_report")
    assert {"golden", "random"} <= set(report.columns)
    meta = result.get_asset_materialization_events()[0].materialization.metadata
    assert "tiny-random-llama" in meta["report"].value
    # The golden ranking's reliability, as golden_subset recorded it, is in the report beside the verdict.
    assert "How much to trust the ranking" in meta["report"].value
    assert meta["reliability"].value in meta["report"].value

    warehouse = Warehouse(isolated_home / "warehouse")
    answers = warehouse.query("select variant, count(*) n from nuggets.mt_bench_results group by 1 order by 1")
    assert answers.to_dict("list") == {"variant": ["golden", "random"], "n": [4, 4]}  # 2 questions x 2 turns
    judged = warehouse.query("select count(*) n from nuggets.alpaca_eval_results")
    assert judged["n"].iloc[0] == 6

    first = warehouse.query("select * from nuggets.alpaca_eval_results where variant = 'golden' order by index")
    cached = run(prepared, ["alpaca_eval_results"], "golden")
    assert cached.success  # a re-run answers every judgment from the cache
    rows = cached.output_for_node("alpaca_eval_results").sort_values("index")
    assert not first["cached"].any() and rows["cached"].all()
    assert rows["preference"].tolist() == first["preference"].tolist()


def test_paper_profile_evaluates_the_full_sets_and_set_fields_override_it() -> None:
    paper = {"profile": "paper"}
    assert MTBenchConfig().settings() == (4, 128)  # cpu-demo: a slice that finishes on 2 cores
    assert MTBenchConfig(**paper).settings() == (None, 1024)  # all 80 questions, FastChat's length
    assert MTBenchConfig(**paper, questions=10).settings() == (10, 1024)
    assert AlpacaEvalConfig(**paper).settings() == (None, 2048)  # all 805 instructions
    assert AlpacaEvalConfig(max_new_tokens=64).settings() == (16, 64)
    assert LikelihoodConfig(**paper).items() == {"alpaca_eval": None, "mt_bench": None}
    assert CalibrationConfig(**paper).pairs() == 100 and CalibrationConfig(n=8).pairs() == 8
    job = dg.Definitions(assets=ASSETS, resources=tiny_resources()).get_implicit_global_asset_job_def()
    with pytest.raises(dg.DagsterInvalidConfigError, match="profile"):
        dg.validate_run_config(job, {"ops": {"mt_bench_results": {"config": {"profile": "full"}}}})


KEY_ENV = "NUGGETS_TEST_EVAL_JUDGE_KEY"
KEY = "sk-eval-" + "Hh7Gg6Ff5" * 4


class FlakyJudgeServer:
    """A chat-completions server on 127.0.0.1: request N is refused with ``status`` when ``fails(N)``, its error
    body echoing the Authorization header from its 10th character; every other request is rated [[7]]."""

    def __init__(self, fails: Callable[[int], bool], status: int = 503) -> None:
        self.requests = 0
        lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    server.requests += 1
                    number = server.requests
                answer = {"index": 0, "message": {"role": "assistant", "content": "Fine. Rating: [[7]]"}}
                code, payload = 200, {"model": body["model"], "choices": [answer]}
                if fails(number):
                    code, payload = status, {"error": {"message": f"upstream saw {self.headers['Authorization'][10:]}"}}
                data = json.dumps(payload).encode()
                self.send_response(code)
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


@pytest.fixture
def golden_checkpoint(isolated_home: Path, tiny_model) -> Path:  # type: ignore[no-untyped-def]
    """The tiny model saved as the `golden` variant's fine-tuned model: evaluation without training first."""
    folder = Warehouse.of_home(isolated_home).finetuned_model_dir("golden")
    tiny_model.model.save_pretrained(folder)
    tiny_model.tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def judge_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., FlakyJudgeServer]]:
    monkeypatch.setenv(KEY_ENV, KEY)
    servers: list[FlakyJudgeServer] = []

    def start(fails: Callable[[int], bool], status: int = 503) -> FlakyJudgeServer:
        servers.append(FlakyJudgeServer(fails, status))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def evaluate_with(
    server: FlakyJudgeServer,
    asset: str,
    partition: str | None = "golden",
    config: dict[str, object] | None = None,
    **judge: object,
) -> dg.ExecuteInProcessResult:
    resources = tiny_resources()
    resources["judge"] = JudgeResource(
        backend="openai", model="judge-model", base_url=server.base_url, api_key_env=KEY_ENV, **judge
    )
    return dg.materialize(
        ASSETS,
        selection=[asset],
        instance=dg.DagsterInstance.ephemeral(),
        resources=resources,
        partition_key=partition,
        run_config={"ops": {asset: {"config": {**SMALL[asset]["config"], **(config or {})}}}},
        raise_on_error=False,
    )


@pytest.mark.parametrize(("asset", "judgments"), [("mt_bench_results", 4), ("alpaca_eval_results", 3)])
def test_an_evaluation_whose_judgments_all_failed_fails_with_the_count_and_the_last_error(
    golden_checkpoint: Path,
    judge_server: Callable[..., FlakyJudgeServer],
    isolated_home: Path,
    asset: str,
    judgments: int,
) -> None:
    """Before: `run --until evaluate` succeeded with 48 of 48 judgments failed, storing a NaN score."""
    server = judge_server(lambda n: True)
    result = evaluate_with(server, asset, max_retries=0)
    assert not result.success
    [failure] = result.get_step_failure_events()
    message = failure.step_failure_data.error.message
    assert f"{judgments} of {judgments} judgments failed" in message, message
    assert "HTTP 503: " in message and "***" in message and KEY[10:18] not in message  # the last error, redacted
    # Nothing stored or exported for it (a passing run writes both: the next tests).
    assert not (isolated_home / "warehouse" / asset).exists()
    assert not list((isolated_home / "exports").rglob("*.json*"))


def test_a_partial_judge_failure_is_a_warning_check_and_more_than_the_share_fails(
    golden_checkpoint: Path, judge_server: Callable[..., FlakyJudgeServer], isolated_home: Path
) -> None:
    """Half of the 4 MT-Bench judgments refused (400, not retried): stored, with a failed WARN check that counts
    them; with max_failed_fraction 0.25 the same run fails."""
    lenient = evaluate_with(judge_server(lambda n: n % 2 == 0, status=400), "mt_bench_results", max_retries=0)
    assert lenient.success
    [check] = lenient.get_asset_check_evaluations()
    assert check.check_name == "judgments_answered" and not check.passed
    assert check.severity == dg.AssetCheckSeverity.WARN
    assert check.metadata["failed_judgments"].value == 2 and check.metadata["judgments"].value == 4
    assert "HTTP 400" in check.metadata["last_error"].value and KEY[10:18] not in check.metadata["last_error"].value
    rows = lenient.output_for_node("mt_bench_results")
    assert int(rows["failed"].sum()) == 2 and rows["score"].notna().sum() == 2
    assert (isolated_home / "warehouse" / "mt_bench_results").exists()
    assert list((isolated_home / "exports").rglob("*.jsonl"))

    strict = evaluate_with(
        judge_server(lambda n: n % 2 == 0, status=400), "mt_bench_results", max_retries=0, max_failed_fraction=0.25
    )
    assert not strict.success
    message = strict.get_step_failure_events()[0].step_failure_data.error.message
    assert "2 of 4 judgments failed" in message and "25%" in message


def test_a_calibration_whose_judge_could_not_be_reached_fails_instead_of_reading_as_untrustworthy(
    judge_server: Callable[..., FlakyJudgeServer], isolated_home: Path
) -> None:
    """Before: with every request refused, judge_calibration stored a row with no agreement, and the report read
    it as a judge with "no readable verdict". 4 pairs, both orders: 8 requests."""
    result = evaluate_with(judge_server(lambda n: True), "judge_calibration", partition=None, max_retries=0)
    assert not result.success
    message = result.get_step_failure_events()[0].step_failure_data.error.message
    assert "judge_calibration: 8 of 8 judgments failed" in message and "HTTP 503: " in message, message
    assert KEY[10:18] not in message
    assert not (isolated_home / "warehouse" / "judge_calibration").exists()

    # One refused request in eight is within the default share: stored, with a failed WARN check that counts it
    # (pointwise, as the server answers with ratings; the pair left without both is not judged).
    partial = evaluate_with(
        judge_server(lambda n: n == 1, status=400),
        "judge_calibration",
        partition=None,
        config={"route": "pointwise"},
        max_retries=0,
    )
    assert partial.success
    [check] = partial.get_asset_check_evaluations()
    assert check.check_name == "judgments_answered" and not check.passed
    assert check.metadata["failed_judgments"].value == 1 and check.metadata["judgments"].value == 8
    row = partial.output_for_node("judge_calibration").iloc[0]
    assert (row["requests"], row["failed"], row["judged"]) == (8, 1, 3)
    assert "HTTP 400" in row["last_error"]


def test_an_evaluation_whose_judgments_all_answered_passes_its_check(
    golden_checkpoint: Path, judge_server: Callable[..., FlakyJudgeServer]
) -> None:
    result = evaluate_with(judge_server(lambda n: False), "alpaca_eval_results")
    assert result.success
    [check] = result.get_asset_check_evaluations()
    assert check.passed and check.metadata["failed_judgments"].value == 0

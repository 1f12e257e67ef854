"""The scoring engine against straightforward uncached computations, on the tiny random model."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
import torch

from nuggets_pipeline.core import scoring
from nuggets_pipeline.core.data import example_id
from nuggets_pipeline.core.modeling import TINY_RANDOM_LLAMA, LoadedModel, encode, load_model
from nuggets_pipeline.core.scoring import (
    PAIR_COLUMNS,
    SCORE_COLUMNS,
    ZERO_SHOT_COLUMNS,
    OneShotChunk,
    ScoringConfig,
    score_one_shot,
    score_zero_shot,
)
from nuggets_pipeline.core.selection import select_golden
from nuggets_pipeline.core.templates import NUGGETS

ANCHORS = [
    ("Name a primary colour.", "", "Red."),
    ("Translate to French.", "Good morning, my friend.", "Bonjour, mon ami."),
    ("List three fruits.", "", "Apple, banana and cherry are three common fruits that grow on trees."),
    ("Summarise the sentence.", "The cat sat on the mat all afternoon.", "A cat rested on a mat."),
    (
        "Write a haiku about rain.",
        "",
        "Soft rain on the roof,\nthe garden drinks in silence,\nclouds drift east at dusk.",
    ),
    ("What is 2 + 2?", "", "4"),
]
CANDIDATES = [
    ("Give a synonym for happy.", "", "Joyful."),
    ("Explain photosynthesis briefly.", "", "Plants turn light, water and carbon dioxide into sugar and oxygen."),
    ("Reverse the word.", "stressed", "desserts"),
    ("Describe the sea in one line.", "", "An endless blue field that breathes against the shore."),
    ("Count to five.", "", "1, 2, 3, 4, 5"),
]


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    # These forwards are tiny: a second thread only adds synchronisation, which on a shared 2-core machine
    # costs up to 8x (measured) when the other core is busy.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def frame(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    return pd.DataFrame(
        [{"id": example_id(*row), "instruction": row[0], "input": row[1], "output": row[2]} for row in rows]
    )


def parts(loaded: LoadedModel, row: tuple[str, str, str]) -> tuple[list[int], list[int]]:
    return encode(loaded.tokenizer, NUGGETS.prompt(row[0], row[1])), encode(loaded.tokenizer, NUGGETS.response(row[2]))


def demo(loaded: LoadedModel, row: tuple[str, str, str], separator: str = "\n\n") -> list[int]:
    return encode(loaded.tokenizer, NUGGETS.full(*row) + separator)


@torch.no_grad()
def concat_logprob(loaded: LoadedModel, context: list[int], response: list[int]) -> float:
    """log p(response | context) from one plain forward of the concatenated ids, no cache, no padding."""
    ids = torch.tensor([context + response])
    logprobs = loaded.model(input_ids=ids).logits[0, len(context) - 1 : -1].double().log_softmax(-1)
    return float(logprobs.gather(1, ids[0, len(context) :, None]).sum())


def run(loaded: LoadedModel, anchors: pd.DataFrame, candidates: pd.DataFrame, config: ScoringConfig):
    zero = score_zero_shot(loaded, anchors, config)
    chunks = list(score_one_shot(loaded, anchors, zero, candidates, config))
    scores = pd.concat([c.scores for c in chunks], ignore_index=True)
    pairs = pd.concat([c.pair_deltas for c in chunks], ignore_index=True)
    return zero, scores, pairs, chunks


def test_cached_scores_match_concatenated_sequences(tiny_model: LoadedModel) -> None:
    anchors, candidates = frame(ANCHORS), frame(CANDIDATES[:3])
    zero, _, pairs, _ = run(tiny_model, anchors, candidates, ScoringConfig(batch_tokens=64))
    bos = tiny_model.bos_token_id
    assert list(zero.columns) == ZERO_SHOT_COLUMNS
    assert list(pairs.columns) == PAIR_COLUMNS
    one_shot = pairs.set_index(["candidate_id", "anchor_id"])["one_shot_logprob"]
    for a, anchor in enumerate(ANCHORS):
        prompt, response = parts(tiny_model, anchor)
        assert zero["logprob_sum"][a] == pytest.approx(concat_logprob(tiny_model, [bos, *prompt], response), abs=1e-4)
        assert zero["response_tokens"][a] == len(response)
        assert zero["prompt_tokens"][a] == len(prompt)
        for c, candidate in enumerate(CANDIDATES[:3]):
            expected = concat_logprob(tiny_model, [bos, *demo(tiny_model, candidate), *prompt], response)
            assert one_shot[(candidates.id[c], anchors.id[a])] == pytest.approx(expected, abs=1e-4)


def test_golden_score_by_hand(tiny_model: LoadedModel) -> None:
    anchors, candidates = frame(ANCHORS[:4]), frame(CANDIDATES[:1])
    _, scores, pairs, _ = run(tiny_model, anchors, candidates, ScoringConfig(separator="\n###\n"))
    bos, prefix = tiny_model.bos_token_id, demo(tiny_model, CANDIDATES[0], "\n###\n")
    deltas = []
    for anchor in ANCHORS[:4]:
        prompt, response = parts(tiny_model, anchor)
        one = concat_logprob(tiny_model, [bos, *prefix, *prompt], response)
        deltas.append(one - concat_logprob(tiny_model, [bos, *prompt], response))
    wins = sum(d > 0 for d in deltas)
    assert 0 < wins < 4, "the case should have both wins and losses to be a real check"
    row = scores.iloc[0]
    assert list(scores.columns) == SCORE_COLUMNS
    assert (row.wins, row.anchors_scored, row.n_anchors, row.verdict) == (wins, 4, 4, "exact")
    assert row.golden_score == wins / 4
    assert row.mean_delta == pytest.approx(np.mean(deltas), abs=1e-4)
    assert row.median_delta == pytest.approx(np.median(deltas), abs=1e-4)
    assert row.prefix_tokens == 1 + len(prefix)
    assert row.anchor_tokens_scored == sum(sum(map(len, parts(tiny_model, a))) for a in ANCHORS[:4])
    assert pairs["delta"].to_numpy() == pytest.approx(deltas, abs=1e-4)


def test_bos_leads_both_conditions_and_anchor_ids_are_identical(tiny_model: LoadedModel) -> None:
    calls: list[tuple[torch.Tensor, int]] = []

    def capture(_module: torch.nn.Module, _args: tuple, kwargs: dict) -> None:
        past = kwargs.get("past_key_values")
        calls.append((kwargs["input_ids"].clone(), past.get_seq_length() if past is not None else 0))

    anchors, candidates = frame(ANCHORS[:3]), frame(CANDIDATES[:1])
    handle = tiny_model.model.base_model.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        zero = score_zero_shot(tiny_model, anchors, ScoringConfig(batch_tokens=1))
        zero_calls = len(calls)
        list(score_one_shot(tiny_model, anchors, zero, candidates, ScoringConfig(batch_tokens=1)))
    finally:
        handle.remove()

    bos = tiny_model.bos_token_id
    prefixes = [ids[0].tolist() for ids, cached in calls if cached == 0]
    assert prefixes == [[bos], [bos, *demo(tiny_model, CANDIDATES[0])]]
    rows = [ids[0].tolist() for ids, cached in calls if cached > 0]
    expected = [prompt + response for prompt, response in (parts(tiny_model, a) for a in ANCHORS[:3])]
    zero_rows, one_rows = rows[: zero_calls - 1], rows[zero_calls - 1 :]
    assert sorted(zero_rows) == sorted(one_rows) == sorted(expected)
    assert all(bos not in row for row in rows)


def test_padding_batching_and_order_do_not_change_scores(tiny_model: LoadedModel) -> None:
    anchors, candidates = frame(ANCHORS), frame(CANDIDATES)
    base_zero, base, base_pairs, _ = run(
        tiny_model, anchors, candidates, ScoringConfig(batch_tokens=1, candidates_per_pass=1)
    )
    shuffled_anchors = anchors.sample(frac=1, random_state=3).reset_index(drop=True)
    shuffled_candidates = candidates.sample(frac=1, random_state=4).reset_index(drop=True)
    variants = [
        (anchors, candidates, ScoringConfig(batch_tokens=100_000)),  # one batch, heavy right padding
        (shuffled_anchors, shuffled_candidates, ScoringConfig(batch_tokens=90, candidates_per_pass=3)),
        (anchors, candidates, ScoringConfig(batch_tokens=100_000, candidates_per_pass=5, candidates_per_chunk=2)),
    ]
    key = ["candidate_id", "anchor_id"]
    for variant_anchors, variant_candidates, config in variants:
        zero, scores, pairs, _ = run(tiny_model, variant_anchors, variant_candidates, config)
        merged = base_zero.merge(zero, on="anchor_id")
        assert merged["logprob_sum_x"].to_numpy() == pytest.approx(merged["logprob_sum_y"].to_numpy(), abs=1e-4)
        merged = base_pairs.merge(pairs, on=key)
        assert len(merged) == len(base_pairs)
        assert merged["delta_x"].to_numpy() == pytest.approx(merged["delta_y"].to_numpy(), abs=1e-4)
        merged = base.merge(scores, on="candidate_id")
        assert (merged["wins_x"] == merged["wins_y"]).all()


def test_decision_mode_selects_what_exact_scoring_selects(tiny_model: LoadedModel) -> None:
    anchors, candidates = frame(ANCHORS), frame(CANDIDATES)
    _, exact, _, _ = run(tiny_model, anchors, candidates, ScoringConfig(batch_tokens=1))
    saved = 0.0
    for threshold in (0.0, 0.3, 0.5, 0.8):
        config = ScoringConfig(batch_tokens=1, decision_threshold=threshold)
        _, decided, pairs, chunks = run(tiny_model, anchors, candidates, config)
        chosen = set(select_golden(decided, threshold=threshold)["candidate_id"])
        assert chosen == set(select_golden(exact, threshold=threshold)["candidate_id"])
        early = decided["verdict"] != "exact"
        assert decided.loc[early, "golden_score"].isna().all()
        assert (decided.loc[early, "anchors_scored"] < len(ANCHORS)).all()
        assert len(pairs) == decided["anchors_scored"].sum()
        full = decided[~early].merge(exact, on="candidate_id")
        assert (full["golden_score_x"] == full["golden_score_y"]).all()
        saved = max(saved, chunks[0].passes_saved)
    assert saved > 0, "some threshold should let decision mode stop early"


def test_max_length_truncation_is_counted_and_flagged(tiny_model: LoadedModel) -> None:
    anchors, candidates = frame(ANCHORS), frame(CANDIDATES[1:2])
    bos, prefix = tiny_model.bos_token_id, demo(tiny_model, CANDIDATES[1])
    lengths = [sum(map(len, parts(tiny_model, a))) for a in ANCHORS]
    longest = int(np.argmax(lengths))
    max_length = lengths[longest] - 1  # with BOS, the longest anchor loses 2 prompt tokens
    assert sorted(lengths)[-2] <= max_length - 1, "only the longest anchor should need cutting"
    config = ScoringConfig(max_length=max_length)
    zero, scores, pairs, _ = run(tiny_model, anchors, candidates, config)

    assert zero["truncated"].tolist() == [a == longest for a in range(len(ANCHORS))]
    assert zero["tokens_cut"][longest] == 2
    prompt, response = parts(tiny_model, ANCHORS[longest])
    assert zero["logprob_sum"][longest] == pytest.approx(
        concat_logprob(tiny_model, [bos, *prompt[2:]], response), abs=1e-4
    )

    row = scores.iloc[0]
    cuts = [max(0, 1 + len(prefix) + n - max_length) for n in lengths]
    cuts[longest] = len(prefix)  # the cut anchor fills max_length with BOS alone
    assert row.truncated_pairs == sum(c > 0 for c in cuts) > 1
    assert row.prefix_tokens_cut == sum(cuts)
    deltas = pairs.set_index("anchor_id")["one_shot_logprob"]
    # No room left for the demonstration: the one-shot sequence is the zero-shot one, delta exactly 0.
    assert deltas[anchors.id[longest]] == zero["logprob_sum"][longest]
    partial = next(a for a, c in enumerate(cuts) if 0 < c < len(prefix))
    prompt, response = parts(tiny_model, ANCHORS[partial])
    expected = concat_logprob(tiny_model, [bos, *prefix[cuts[partial] :], *prompt], response)
    assert deltas[anchors.id[partial]] == pytest.approx(expected, abs=1e-4)


def test_truncated_pairs_score_the_same_in_shared_passes(tiny_model: LoadedModel) -> None:
    anchors, candidates = frame(ANCHORS), frame(CANDIDATES[:3])
    one_at_a_time = ScoringConfig(max_length=40, batch_tokens=1)
    shared = ScoringConfig(max_length=40, batch_tokens=200, candidates_per_pass=3)
    _, scores, pairs, _ = run(tiny_model, anchors, candidates, one_at_a_time)
    _, shared_scores, shared_pairs, _ = run(tiny_model, anchors, candidates, shared)
    assert scores["truncated_pairs"].sum() > 3
    assert (scores["prefix_tokens_cut"] == shared_scores["prefix_tokens_cut"]).all()
    merged = pairs.merge(shared_pairs, on=["candidate_id", "anchor_id"])
    assert len(merged) == len(pairs) == len(ANCHORS) * 3
    assert merged["delta_x"].to_numpy() == pytest.approx(merged["delta_y"].to_numpy(), abs=1e-4)


def test_response_is_cut_only_when_it_cannot_fit(tiny_model: LoadedModel) -> None:
    anchors = frame(ANCHORS[4:5])
    prompt, response = parts(tiny_model, ANCHORS[4])
    zero = score_zero_shot(tiny_model, anchors, ScoringConfig(max_length=10))
    assert (zero["prompt_tokens"][0], zero["response_tokens"][0]) == (1, 8)
    assert zero["tokens_cut"][0] == len(prompt) - 1 + len(response) - 8
    expected = concat_logprob(tiny_model, [tiny_model.bos_token_id, prompt[-1]], response[:8])
    assert zero["logprob_sum"][0] == pytest.approx(expected, abs=1e-4)


def test_chunks_progress_and_resume(tiny_model: LoadedModel) -> None:
    anchors, candidates = frame(ANCHORS[:3]), frame(CANDIDATES)
    config = ScoringConfig(candidates_per_chunk=2, candidates_per_pass=2, keep_pair_deltas=False)
    zero = score_zero_shot(tiny_model, anchors, config)
    seen: list[tuple[int, int]] = []
    chunks = list(
        score_one_shot(tiny_model, anchors, zero, candidates, config, progress=lambda d, t: seen.append((d, t)))
    )
    assert [len(c.scores) for c in chunks] == [2, 2, 1]
    assert seen == [(2, 5), (4, 5), (5, 5)]
    assert all(isinstance(c, OneShotChunk) and c.pair_deltas.empty for c in chunks)
    assert list(chunks[0].pair_deltas.columns) == PAIR_COLUMNS
    assert all(c.anchor_tokens > 0 and c.seconds > 0 and c.passes_saved == 0 for c in chunks)
    resumed = next(score_one_shot(tiny_model, anchors, zero, candidates.iloc[4:], config)).scores
    last = chunks[-1].scores
    assert resumed["candidate_id"].tolist() == last["candidate_id"].tolist()
    assert resumed["mean_delta"].to_numpy() == pytest.approx(last["mean_delta"].to_numpy(), abs=1e-5)


def test_mismatched_zero_shot_and_bad_config_are_refused(tiny_model: LoadedModel) -> None:
    anchors, candidates = frame(ANCHORS[:2]), frame(CANDIDATES[:1])
    zero = score_zero_shot(tiny_model, anchors, ScoringConfig(template="alpaca"))
    with pytest.raises(ValueError, match="another template"):
        next(score_one_shot(tiny_model, anchors, zero, candidates, ScoringConfig()))
    with pytest.raises(ValueError, match="missing"):
        next(score_one_shot(tiny_model, anchors, zero.iloc[:1], candidates, ScoringConfig(template="alpaca")))
    with pytest.raises(ValueError, match="unknown prompt template"):
        ScoringConfig(template="nope")
    with pytest.raises(ValueError, match="decision_threshold"):
        ScoringConfig(decision_threshold=1.0)
    with pytest.raises(ValueError, match="max_length"):
        ScoringConfig(max_length=2)


@pytest.mark.slow
def test_smollm2_cached_scores_match_concatenated(smollm2: LoadedModel) -> None:
    anchors, candidates = frame(ANCHORS[:2]), frame(CANDIDATES[2:3])
    zero, scores, pairs, _ = run(smollm2, anchors, candidates, ScoringConfig())
    bos, prefix = smollm2.bos_token_id, demo(smollm2, CANDIDATES[2])
    for a, anchor in enumerate(ANCHORS[:2]):
        prompt, response = parts(smollm2, anchor)
        zero_exact = concat_logprob(smollm2, [bos, *prompt], response)
        one_exact = concat_logprob(smollm2, [bos, *prefix, *prompt], response)
        assert zero["logprob_sum"][a] == pytest.approx(zero_exact, abs=1e-3)
        assert pairs["one_shot_logprob"][a] == pytest.approx(one_exact, abs=1e-3)
    # A trained model finds a short answer far likelier than uniform over 49k tokens (-10.8 nats a token).
    assert (zero["logprob_mean"] > -8).all()
    assert scores["verdict"].tolist() == ["exact"]


@pytest.mark.parametrize("max_length", [None, 40])
def test_a_subset_of_pairs_scores_exactly_those_pairs_as_a_full_pass_would(
    tiny_model: LoadedModel, max_length: int | None
) -> None:
    """The adaptive mode's rounds: each candidate its own anchors, none for one; values as in a full pass."""
    anchors, candidates = frame(ANCHORS), frame(CANDIDATES[:4])
    config = ScoringConfig(max_length=max_length, candidates_per_pass=3)
    zero, _, full, _ = run(tiny_model, anchors, candidates, config)
    ids, anchor_ids = candidates["id"].tolist(), anchors["id"].tolist()
    wanted = {ids[0]: anchor_ids[:2], ids[1]: anchor_ids[3:], ids[3]: [anchor_ids[5], anchor_ids[0]]}
    chunks = list(score_one_shot(tiny_model, anchors, zero, candidates, config, anchors_for=wanted))
    pairs = pd.concat([c.pair_deltas for c in chunks], ignore_index=True)
    asked = {(c, a) for c, chosen in wanted.items() for a in chosen}
    assert set(zip(pairs["candidate_id"], pairs["anchor_id"], strict=True)) == asked
    merged = pairs.merge(full, on=["candidate_id", "anchor_id"])
    assert len(merged) == len(asked)
    assert merged["delta_x"].to_numpy() == pytest.approx(merged["delta_y"].to_numpy(), abs=1e-4)
    assert sum(c.anchor_passes for c in chunks) == len(asked)
    scores = pd.concat([c.scores for c in chunks]).set_index("candidate_id")
    assert scores.loc[ids[2], "anchors_scored"] == 0 and scores.loc[ids[1], "anchors_scored"] == 3


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_log_probs_in_head_slices_and_normaliser_blocks_match_a_float64_log_softmax(
    dtype: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The LM head runs in row slices and the float32 normaliser in cache-sized blocks. The blocks leave every
    row's value as it was to the last bit; slices can move it by float rounding (another matmul shape)."""
    loaded = load_model(TINY_RANDOM_LLAMA, dtype=dtype, device="cpu")
    head = loaded.model.get_output_embeddings()
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(23, head.in_features, generator=generator).to(loaded.dtype)
    targets = torch.randint(0, head.out_features, (23,), generator=generator)
    with torch.inference_mode():
        expected = head(hidden).double().log_softmax(-1).gather(1, targets[:, None]).squeeze(1)
        monkeypatch.setattr(scoring, "_NORM_ELEMENTS", head.out_features * len(targets))  # one block
        whole = scoring._response_logprobs(loaded.model, hidden, targets)
        monkeypatch.setattr(scoring, "_NORM_ELEMENTS", 3 * head.out_features)  # blocks of 3 rows, a ragged end
        blocked = scoring._response_logprobs(loaded.model, hidden, targets)
        monkeypatch.setattr(scoring, "_HEAD_ROWS", 7)  # slices of 7, 7, 7, 2 rows
        sliced = scoring._response_logprobs(loaded.model, hidden, targets)
    assert torch.equal(blocked, whole)
    assert blocked.double().numpy() == pytest.approx(expected.numpy(), abs=1e-5)
    assert sliced.double().numpy() == pytest.approx(expected.numpy(), abs=1e-5)


def test_eager_attention_scores_as_sdpa_does(tiny_model: LoadedModel) -> None:
    """The 4D mask is additive in the model's dtype: -inf for SDPA, the dtype's minimum for eager attention."""
    eager = load_model(TINY_RANDOM_LLAMA, dtype="float32", device="cpu")
    eager.model.config._attn_implementation = "eager"
    anchors, candidates = frame(ANCHORS), frame(CANDIDATES[:2])
    config = ScoringConfig(batch_tokens=90)
    sdpa_zero, _, sdpa_pairs, _ = run(tiny_model, anchors, candidates, config)
    eager_zero, _, eager_pairs, _ = run(eager, anchors, candidates, config)
    assert eager_zero["logprob_sum"].to_numpy() == pytest.approx(sdpa_zero["logprob_sum"].to_numpy(), abs=1e-4)
    assert eager_pairs["one_shot_logprob"].to_numpy() == pytest.approx(
        sdpa_pairs["one_shot_logprob"].to_numpy(), abs=1e-4
    )


def test_batch_plan_keeps_the_budget_and_pads_less_than_taking_the_most_rows_that_fit() -> None:
    # 16 of the paper's KMeans anchors' lengths (SmolLM2 tokens), each once per candidate for 2 candidates.
    lengths = np.sort(np.repeat([39, 39, 42, 47, 52, 68, 91, 109, 146, 215, 221, 228, 263, 300, 343, 481], 2))
    greedy, rest = [], lengths
    while rest.size:
        n = scoring._batch_rows(rest, 512)
        greedy.append(rest[:n])
        rest = rest[n:]
    ends = scoring._plan_batches(lengths, 512)
    planned = np.split(lengths, ends[:-1])
    assert ends[-1] == len(lengths) and all(len(batch) for batch in planned)
    assert all(len(batch) * batch.max() <= 512 for batch in planned)
    padded = sum(len(batch) * batch.max() for batch in planned)
    assert len(planned) <= len(greedy)
    assert padded < sum(len(batch) * batch.max() for batch in greedy)
    # A row longer than the budget still goes, alone.
    assert scoring._plan_batches(np.array([10, 10, 900]), 64).tolist() == [2, 3]

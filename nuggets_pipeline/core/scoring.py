"""NUGGETS scoring engine: zero-shot and one-shot log-probabilities of anchor responses, and golden scores.

A candidate's golden score is the fraction of anchors whose response becomes more likely when the candidate is
shown first as a one-shot demonstration:

    zero-shot  log p(response | BOS + anchor prompt)
    one-shot   log p(response | BOS + template.full(candidate) + separator + anchor prompt)

Prompt, response and demonstration are tokenised separately and their ids concatenated, so an anchor's tokens
are the same ids in both conditions, and BOS is the first id of both.

How the work is done
- Each prefix (BOS, or BOS + demonstration) is run once; its key/value cache is shared by every anchor scored
  after it. A fresh cache object is built per micro-batch from those tensors because a forward appends to it.
- Anchors are sorted by length and cut into micro-batches under a token budget (rows x padded length), right
  padded, with explicit position ids and a 4D mask covering prefix + anchor keys. Several candidates can share a
  micro-batch; rows of one anchor for several candidates need no padding at all.
- Only hidden states at response positions go through the LM head, in slices, so full-vocabulary logits never
  exist for a whole batch.

Truncation (only when ``max_length`` is set; nothing is cut otherwise)
- An anchor must fit with BOS: its prompt loses tokens from the left first (at least one prompt token is kept),
  then its response loses tokens from the right. The same cut anchor is scored in both conditions and the cut
  is reported (``tokens_cut``, ``truncated``).
- A one-shot sequence that is still too long loses demonstration tokens from the left (BOS stays first). The pair
  is scored on exactly that sequence and counted in ``truncated_pairs``; a pair whose demonstration is cut away
  entirely is the zero-shot sequence itself, so it gets the zero-shot value (delta 0, not a win).

Decision mode (``decision_threshold`` t) stops scoring a candidate once its verdict cannot change: accepted when
wins / n > t already, rejected when even winning every remaining anchor gives (wins + remaining) / n <= t. The
comparisons are the ones ``selection.select_golden`` makes, so the selected set equals exact scoring's.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from transformers import DynamicCache, PreTrainedModel

from nuggets_pipeline.core.modeling import LoadedModel, encode
from nuggets_pipeline.core.templates import PromptTemplate, get_template

# On the development CPU (AVX2 only) bfloat16 matmuls ran ~6x slower than float32; on CPUs with bfloat16
# instructions and on GPUs they run several times faster. "auto" (modeling.resolve_dtype) picks by the hardware.
DEFAULT_DTYPE = "auto"

CPU_BATCH_TOKENS = 512
CUDA_BATCH_TOKENS = 16_384

# Rows of hidden states sent through the LM head at once: bounds the logits to ~200 MB with a 49k vocab.
_HEAD_ROWS = 1024
# What one more forward costs, in padded anchor tokens, when micro-batches are planned: each forward streams every
# weight from memory once. SmolLM2 bfloat16 on 2 AMX cores: an 8-token forward took 39 ms, ~85 tokens' worth of
# a 500-token one; float32 48 ms. Planned by this cost instead of taking the most rows that fit, 2 x 16 of the
# paper's anchors ran 110 padding tokens instead of 323, in the same 15 forwards.
_FORWARD_TOKENS = 64
# On CPU the float32 log-normaliser runs over blocks of this many logits (2 MB), so its passes (cast, max,
# subtract, exp, sum) stay in cache instead of streaming a [1024, vocab] float32 slice from memory five times:
# SmolLM2 bfloat16 on AMX, 463 rows: the normaliser took 94 ms beside a 28 ms head matmul, ~40 ms in blocks.
_NORM_ELEMENTS = 1 << 19

ZERO_SHOT_COLUMNS = [
    "anchor_id",
    "logprob_sum",
    "logprob_mean",
    "response_tokens",
    "prompt_tokens",
    "tokens_cut",
    "truncated",
]
SCORE_COLUMNS = [
    "candidate_id",
    "golden_score",
    "wins",
    "anchors_scored",
    "n_anchors",
    "verdict",
    "mean_delta",
    "median_delta",
    "prefix_tokens",
    "truncated_pairs",
    "prefix_tokens_cut",
    "anchor_tokens_scored",
]
PAIR_COLUMNS = ["candidate_id", "anchor_id", "one_shot_logprob", "delta"]


@dataclass
class ScoringConfig:
    template: str = "nuggets"
    separator: str = "\n\n"
    max_length: int | None = None
    # Rows x padded anchor length per forward; None picks by device. On CPU a bigger batch buys no speed, only
    # padding (SmolLM2, 2 cores: ~0.9 of a plain forward's speed at 512 tokens, ~0.5 at 4096); a GPU wants more.
    batch_tokens: int | None = None
    # Candidates whose anchor rows share forward passes: more rows to sort by length means less padding and fewer
    # forwards. SmolLM2, 2 cores, 4 vs 1 in 5 paired runs: +18-39% on 8 short demo anchors, +1-11% on 16 of the
    # paper's KMeans anchors, never slower; the cost is 4 prefix caches held at once.
    candidates_per_pass: int = 4
    # Candidates per yielded chunk: the caller's checkpoint granularity.
    candidates_per_chunk: int = 64
    keep_pair_deltas: bool = True
    decision_threshold: float | None = None

    def __post_init__(self) -> None:
        if self.max_length is not None and self.max_length < 3:
            raise ValueError("max_length must be at least 3 (BOS, one prompt token, one response token)")
        if (self.batch_tokens is not None and self.batch_tokens < 1) or min(
            self.candidates_per_pass, self.candidates_per_chunk
        ) < 1:
            raise ValueError("batch_tokens, candidates_per_pass and candidates_per_chunk must be positive")
        if self.decision_threshold is not None and not 0.0 <= self.decision_threshold < 1.0:
            raise ValueError("decision_threshold must be in [0, 1)")
        get_template(self.template)

    def budget(self, device: torch.device) -> int:
        if self.batch_tokens is not None:
            return self.batch_tokens
        return CUDA_BATCH_TOKENS if device.type == "cuda" else CPU_BATCH_TOKENS


@dataclass
class OneShotChunk:
    scores: pd.DataFrame
    pair_deltas: pd.DataFrame
    anchor_tokens: int  # anchor tokens run through the model (each anchor once per candidate)
    prefix_tokens: int  # demonstration prefix tokens run through the model
    anchor_passes: int  # (candidate, anchor) pairs scored
    anchor_passes_total: int  # pairs exact scoring would score
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.anchor_tokens / self.seconds if self.seconds > 0 else float("nan")

    @property
    def passes_saved(self) -> float:
        return 1.0 - self.anchor_passes / self.anchor_passes_total if self.anchor_passes_total else 0.0


@dataclass
class _Anchors:
    """Anchors tokenised (and cut to max_length) once, shared by both conditions."""

    ids: np.ndarray
    tokens: torch.Tensor  # [n, longest] prompt + response ids, right padded, on the model's device
    lengths: np.ndarray  # prompt + response tokens
    prompt_lens: np.ndarray
    response_lens: np.ndarray
    tokens_cut: np.ndarray


@dataclass
class _PrefixCache:
    """Key/value states of a few prefixes, right padded to the longest: per layer [n_prefix, kv_heads, P, dim]."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    lengths: np.ndarray


def _texts(frame: pd.DataFrame) -> tuple[list[str], list[str], list[str]]:
    missing = {"id", "instruction", "input", "output"} - set(frame.columns)
    if missing:
        raise ValueError(f"examples need columns id, instruction, input, output; missing {sorted(missing)}")
    return (
        frame["instruction"].fillna("").astype(str).tolist(),
        frame["input"].fillna("").astype(str).tolist(),
        frame["output"].fillna("").astype(str).tolist(),
    )


def _prepare_anchors(loaded: LoadedModel, anchors: pd.DataFrame, config: ScoringConfig) -> _Anchors:
    if anchors.empty:
        raise ValueError("no anchors to score")
    template = get_template(config.template)
    prompts, responses = [], []
    for instruction, input_text, output in zip(*_texts(anchors), strict=True):
        prompts.append(encode(loaded.tokenizer, template.prompt(instruction, input_text)))
        responses.append(encode(loaded.tokenizer, template.response(output)))
    prompt_lens = np.array([len(p) for p in prompts], dtype=np.int64)
    response_lens = np.array([len(r) for r in responses], dtype=np.int64)
    empty = anchors["id"].to_numpy()[(prompt_lens == 0) | (response_lens == 0)]
    if empty.size:
        raise ValueError(f"anchors with an empty prompt or response cannot be scored: {list(empty[:5])}")

    keep_prompt, keep_response = prompt_lens.copy(), response_lens.copy()
    if config.max_length is not None:
        room = config.max_length - 1  # BOS comes first
        keep_response = np.minimum(response_lens, room - 1)
        keep_prompt = np.minimum(prompt_lens, room - keep_response)
    rows = [
        p[len(p) - kp :] + r[:kr] for p, r, kp, kr in zip(prompts, responses, keep_prompt, keep_response, strict=True)
    ]
    lengths = keep_prompt + keep_response
    table = torch.full((len(rows), int(lengths.max())), _pad_id(loaded), dtype=torch.long)
    for i, row in enumerate(rows):
        table[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return _Anchors(
        ids=anchors["id"].astype(str).to_numpy(),
        tokens=table.to(loaded.device),
        lengths=lengths,
        prompt_lens=keep_prompt,
        response_lens=keep_response,
        tokens_cut=(prompt_lens - keep_prompt) + (response_lens - keep_response),
    )


def demonstration_ids(
    loaded: LoadedModel, candidates: pd.DataFrame, template: PromptTemplate, separator: str
) -> list[list[int]]:
    """Token ids of each candidate rendered in full plus the separator (BOS not included)."""
    return [
        encode(loaded.tokenizer, template.full(instruction, input_text, output) + separator)
        for instruction, input_text, output in zip(*_texts(candidates), strict=True)
    ]


def _pad_id(loaded: LoadedModel) -> int:
    pad = loaded.tokenizer.pad_token_id
    return int(pad) if pad is not None else loaded.bos_token_id


def _check_model(model: PreTrainedModel) -> None:
    implementation = model.config._attn_implementation
    if implementation not in ("sdpa", "eager"):
        raise ValueError(f"scoring builds 4D attention masks for 'sdpa' or 'eager', not {implementation!r}")
    if getattr(model.config, "final_logit_softcapping", None) or getattr(model.config, "logit_scale", None):
        raise ValueError("models that rescale logits after the LM head are not supported by the scorer")


@torch.inference_mode()
def _prefix_cache(model: PreTrainedModel, prefixes: list[list[int]], device: torch.device) -> _PrefixCache:
    lengths = np.array([len(p) for p in prefixes], dtype=np.int64)
    ids = torch.full((len(prefixes), int(lengths.max())), prefixes[0][0], dtype=torch.long)
    for row, prefix in enumerate(prefixes):
        ids[row, : len(prefix)] = torch.tensor(prefix, dtype=torch.long)
    # One right-padded forward for all of them, as every forward streams all the weights once. Causal attention
    # keeps each prefix's keys and values independent of the padding after it; the anchors' masks hide the
    # padded slots.
    out = model.base_model(input_ids=ids.to(device), use_cache=True)
    layers = out.past_key_values.layers
    return _PrefixCache(
        keys=[layer.keys for layer in layers], values=[layer.values for layer in layers], lengths=lengths
    )


def _response_logprobs(model: PreTrainedModel, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) per row of ``hidden``, applying the LM head to a slice of rows at a time."""
    head = model.get_output_embeddings()
    out = torch.empty(len(targets), dtype=torch.float32, device=hidden.device)
    for start in range(0, len(targets), _HEAD_ROWS):
        logits = head(hidden[start : start + _HEAD_ROWS])
        end = start + len(logits)
        out[start:end] = logits.gather(1, targets[start:end, None]).squeeze(1).float()
        # A GPU wants the whole slice per kernel; a CPU wants blocks that fit its cache. Each row's result is
        # the same either way.
        rows = max(1, _NORM_ELEMENTS // logits.shape[1]) if logits.device.type == "cpu" else len(logits)
        for row in range(0, len(logits), rows):
            # float32 before the softmax: bfloat16 log-probs would be rounded to ~1% each. The log-normaliser is
            # logsumexp's max-shifted sum, in place (a float32 model's logits are not copied); not cross_entropy,
            # whose float32 sum over the vocabulary drifts by ~8e-6 nats a token, always one way.
            block = logits[row : row + rows].float()
            peak = block.amax(-1, keepdim=True)
            log_normaliser = block.sub_(peak).exp_().sum(-1).log_() + peak.squeeze(1)
            out[start + row : start + row + len(block)] -= log_normaliser
    return out


@torch.inference_mode()
def _score_batch(
    model: PreTrainedModel, anchors: _Anchors, cache: _PrefixCache, rows_prefix: np.ndarray, rows_anchor: np.ndarray
) -> np.ndarray:
    """Summed response log-probs of one micro-batch of (prefix, anchor) rows."""
    device = anchors.tokens.device
    rows = len(rows_anchor)
    anchor_lens = torch.as_tensor(anchors.lengths[rows_anchor], device=device)
    prefix_lens = torch.as_tensor(cache.lengths[rows_prefix], device=device)
    width = int(anchors.lengths[rows_anchor].max())
    prefix_width = int(cache.lengths[rows_prefix].max())
    ids = anchors.tokens[torch.as_tensor(rows_anchor, device=device), :width]

    if (rows_prefix == rows_prefix[0]).all():
        # One prefix for every row: a broadcast view, copied only by the cache's own concatenation.
        only = int(rows_prefix[0])
        past = [
            (
                k[only : only + 1, :, :prefix_width].expand(rows, -1, -1, -1),
                v[only : only + 1, :, :prefix_width].expand(rows, -1, -1, -1),
            )
            for k, v in zip(cache.keys, cache.values, strict=True)
        ]
    else:
        select = torch.as_tensor(rows_prefix, device=device)
        past = [
            (k[:, :, :prefix_width].index_select(0, select), v[:, :, :prefix_width].index_select(0, select))
            for k, v in zip(cache.keys, cache.values, strict=True)
        ]

    # Keys are [prefix slots | anchor tokens]; a prefix shorter than the widest in the batch leaves masked slots,
    # and its anchor positions continue from its own length, so rotary offsets match the unpadded sequence.
    steps = torch.arange(width, device=device)
    key_valid = torch.cat(
        [
            torch.arange(prefix_width, device=device)[None, :] < prefix_lens[:, None],
            steps[None, :] < anchor_lens[:, None],
        ],
        dim=1,
    )
    causal = torch.ones(width, width, dtype=torch.bool, device=device).tril()
    allowed = torch.cat([torch.ones(width, prefix_width, dtype=torch.bool, device=device), causal], dim=1)
    blocked = ~(key_valid[:, None, :] & allowed[None, :, :])[:, None]
    # An additive mask in the model's dtype, built once: SDPA would turn a bool mask into this same -inf mask in
    # every layer. Eager attention adds it to the scores, where the dtype's minimum is safer than -inf.
    fill = float("-inf") if model.config._attn_implementation == "sdpa" else torch.finfo(model.dtype).min
    mask = torch.zeros(blocked.shape, dtype=model.dtype, device=device).masked_fill_(blocked, fill)

    hidden = model.base_model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=prefix_lens[:, None] + steps[None, :],
        past_key_values=DynamicCache(ddp_cache_data=past),
        use_cache=True,
    ).last_hidden_state

    # The hidden state at position i predicts token i + 1: response tokens [p, p + r) come from [p - 1, p + r - 1).
    first = torch.as_tensor(anchors.prompt_lens[rows_anchor] - 1, device=device)
    last = first + torch.as_tensor(anchors.response_lens[rows_anchor], device=device)
    scored = (steps[None, :] >= first[:, None]) & (steps[None, :] < last[:, None])
    targets = ids.roll(-1, dims=1)[scored]
    row_of = torch.arange(rows, device=device)[:, None].expand(rows, width)[scored]
    logprobs = _response_logprobs(model, hidden[scored], targets)
    sums = torch.zeros(rows, dtype=torch.float64, device=device).index_add_(0, row_of, logprobs.double())
    return sums.cpu().numpy()


def _batch_rows(lengths: np.ndarray, budget: int) -> int:
    """How many of these length-sorted rows fit the budget once padded to the last one (at least one)."""
    fits = np.arange(1, len(lengths) + 1) * lengths <= budget
    return max(1, len(lengths) if fits.all() else int(np.argmin(fits)))


def _plan_batches(lengths: np.ndarray, budget: int) -> np.ndarray:
    """Cut length-sorted rows into consecutive batches under the budget, minimising padded tokens plus
    ``_FORWARD_TOKENS`` per forward; returns each batch's end. Taking the most rows that fit (``_batch_rows``)
    can pad a short row to a long one and leave its twin alone: [146, 215], [215, 221], [221, 228], [228]."""
    n = len(lengths)
    cost = np.full(n + 1, np.inf)
    cost[0] = 0.0
    start = np.zeros(n + 1, dtype=np.int64)
    for end in range(1, n + 1):
        width = int(lengths[end - 1])
        first = max(0, end - max(1, budget // width))  # a row longer than the budget still goes alone
        options = cost[first:end] + (end - np.arange(first, end)) * width + _FORWARD_TOKENS
        best = int(np.argmin(options))
        cost[end], start[end] = options[best], first + best
    ends = []
    end = n
    while end:
        ends.append(end)
        end = int(start[end])
    return np.array(ends[::-1], dtype=np.int64)


def _score_pairs(
    model: PreTrainedModel,
    anchors: _Anchors,
    cache: _PrefixCache,
    pair_prefix: np.ndarray,
    pair_anchor: np.ndarray,
    budget: int,
    active: np.ndarray | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (pair indices, log-prob sums) per micro-batch.

    ``active`` (one flag per pair) may be cleared by the caller between batches to drop pending pairs.
    """
    lengths = anchors.lengths[pair_anchor]
    # Length first (less padding), then anchor, so one anchor's rows for several prefixes sit side by side.
    pending = np.lexsort((pair_prefix, pair_anchor, lengths))
    ends = _plan_batches(lengths[pending], budget)
    while pending.size:
        if active is not None and not active[pending].all():
            # Pairs were dropped: plan the rest again, as their batches would otherwise run part empty.
            pending = pending[active[pending]]
            if not pending.size:
                return
            ends = _plan_batches(lengths[pending], budget)
        batch, pending = pending[: ends[0]], pending[ends[0] :]
        ends = ends[1:] - ends[0]
        yield batch, _score_batch(model, anchors, cache, pair_prefix[batch], pair_anchor[batch])


def score_zero_shot(loaded: LoadedModel, anchors: pd.DataFrame, config: ScoringConfig) -> pd.DataFrame:
    """log p(anchor response | BOS + anchor prompt) for every anchor."""
    _check_model(loaded.model)
    prepared = _prepare_anchors(loaded, anchors, config)
    n = len(prepared.ids)
    cache = _prefix_cache(loaded.model, [[loaded.bos_token_id]], loaded.device)
    sums = np.full(n, np.nan)
    for batch, logprobs in _score_pairs(
        loaded.model, prepared, cache, np.zeros(n, dtype=np.int64), np.arange(n), config.budget(loaded.device)
    ):
        sums[batch] = logprobs
    return pd.DataFrame(
        {
            "anchor_id": prepared.ids,
            "logprob_sum": sums,
            "logprob_mean": sums / prepared.response_lens,
            "response_tokens": prepared.response_lens,
            "prompt_tokens": prepared.prompt_lens,
            "tokens_cut": prepared.tokens_cut,
            "truncated": prepared.tokens_cut > 0,
        },
        columns=ZERO_SHOT_COLUMNS,
    )


def _aligned_zero_shot(prepared: _Anchors, zero_shot: pd.DataFrame) -> np.ndarray:
    table = zero_shot.drop_duplicates("anchor_id").set_index("anchor_id").reindex(prepared.ids)
    missing = prepared.ids[table["logprob_sum"].isna().to_numpy()]
    if missing.size:
        raise ValueError(f"zero-shot scores missing for {missing.size} anchors, e.g. {list(missing[:3])}")
    same_tokens = np.array_equal(
        table["prompt_tokens"].to_numpy(dtype=np.int64), prepared.prompt_lens
    ) and np.array_equal(table["response_tokens"].to_numpy(dtype=np.int64), prepared.response_lens)
    if not same_tokens:
        raise ValueError("zero-shot scores were computed with another template, tokenizer or max_length")
    return table["logprob_sum"].to_numpy(dtype=np.float64)


@dataclass
class _Group:
    """Per-pair state of the candidates scored together in one pass."""

    candidate: np.ndarray  # candidate index (within the group) of each pair
    anchor: np.ndarray
    prefix: np.ndarray  # index into the group's prefixes
    cut: np.ndarray  # demonstration tokens cut from the left for this pair
    one_shot: np.ndarray  # NaN until scored


def _plan_group(
    prepared: _Anchors, demos: list[list[int]], bos: int, zero: np.ndarray, max_length: int | None
) -> tuple[_Group, list[list[int]]]:
    n_anchors = len(prepared.ids)
    candidate = np.repeat(np.arange(len(demos)), n_anchors)
    anchor = np.tile(np.arange(n_anchors), len(demos))
    demo_lens = np.array([len(d) for d in demos], dtype=np.int64)
    cut = np.zeros(len(anchor), dtype=np.int64)
    if max_length is not None:
        cut = np.maximum(0, 1 + demo_lens[candidate] + prepared.lengths[anchor] - max_length)
    prefixes = [[bos, *demo] for demo in demos]
    prefix = candidate.copy()
    partial = (cut > 0) & (cut < demo_lens[candidate])
    if partial.any():
        # Each distinct (candidate, cut) is its own, shorter prefix.
        keys, inverse = np.unique(np.stack([candidate[partial], cut[partial]], axis=1), axis=0, return_inverse=True)
        prefix[partial] = len(prefixes) + inverse.reshape(-1)
        prefixes += [[bos, *demos[c][k:]] for c, k in keys]
    one_shot = np.full(len(anchor), np.nan)
    # Demonstration cut away entirely: the sequence is the zero-shot one.
    whole = (cut > 0) & (cut >= demo_lens[candidate])
    one_shot[whole] = zero[anchor[whole]]
    prefix[whole] = -1
    return _Group(candidate=candidate, anchor=anchor, prefix=prefix, cut=cut, one_shot=one_shot), prefixes


def _score_group(
    loaded: LoadedModel,
    prepared: _Anchors,
    zero: np.ndarray,
    demos: list[list[int]],
    config: ScoringConfig,
    wanted: np.ndarray | None = None,
) -> tuple[_Group, int]:
    """Score one pass of candidates; returns the pairs and the number of prefix tokens run. ``wanted`` (one flag
    per pair, candidate-major) limits the pass to those pairs; the others stay NaN."""
    group, prefixes = _plan_group(prepared, demos, loaded.bos_token_id, zero, config.max_length)
    if wanted is not None:
        group.one_shot[~wanted] = np.nan  # a pair whose demonstration was cut away counts only when asked for
        group.prefix[~wanted] = -1
    n_candidates, n_anchors = len(demos), len(prepared.ids)
    threshold = config.decision_threshold
    wins = np.zeros(n_candidates)
    scored = np.zeros(n_candidates)
    settled = np.zeros(n_candidates, dtype=bool)

    def record(rows: np.ndarray) -> None:
        np.add.at(wins, group.candidate[rows], group.one_shot[rows] > zero[group.anchor[rows]])
        np.add.at(scored, group.candidate[rows], 1)
        if threshold is not None:
            settled[:] = (wins / n_anchors > threshold) | ((wins + n_anchors - scored) / n_anchors <= threshold)

    record(np.flatnonzero(~np.isnan(group.one_shot)))
    prefix_tokens = 0
    # Full demonstrations first (shared by most pairs), then truncated prefixes a pass-width at a time, so at
    # most candidates_per_pass prefix caches are held at once.
    for start in range(0, len(prefixes), n_candidates):
        wave = np.arange(start, min(start + n_candidates, len(prefixes)))
        rows = np.flatnonzero(np.isin(group.prefix, wave) & ~settled[group.candidate])
        if not rows.size:
            continue
        cache = _prefix_cache(loaded.model, [prefixes[i] for i in wave], loaded.device)
        prefix_tokens += int(cache.lengths.sum())
        active = np.ones(len(rows), dtype=bool)
        pairs = _score_pairs(
            loaded.model,
            prepared,
            cache,
            group.prefix[rows] - start,
            group.anchor[rows],
            config.budget(loaded.device),
            active,
        )
        for batch, logprobs in pairs:
            group.one_shot[rows[batch]] = logprobs
            record(rows[batch])
            active[:] = ~settled[group.candidate[rows]]
    return group, prefix_tokens


def _chunk_frames(
    ids: np.ndarray, demos: list[list[int]], prepared: _Anchors, zero: np.ndarray, group: _Group, config: ScoringConfig
) -> tuple[pd.DataFrame, pd.DataFrame]:
    n_anchors = len(prepared.ids)
    done = ~np.isnan(group.one_shot)
    delta = group.one_shot - zero[group.anchor]
    by_candidate = delta.reshape(len(ids), n_anchors)
    anchors_scored = done.reshape(len(ids), n_anchors).sum(axis=1)
    wins = (by_candidate > 0).sum(axis=1)
    exact = anchors_scored == n_anchors
    verdict = np.where(exact, "exact", "reject")
    if config.decision_threshold is not None:
        verdict = np.where(~exact & (wins / n_anchors > config.decision_threshold), "accept", verdict)
    truncated = (group.cut > 0) & done
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a candidate with no pair scored (yet) is NaN, said once
        mean_delta = np.nanmean(by_candidate, axis=1)
        median_delta = np.nanmedian(by_candidate, axis=1)
    scores = pd.DataFrame(
        {
            "candidate_id": ids,
            "golden_score": np.where(exact, wins / n_anchors, np.nan),
            "wins": wins,
            "anchors_scored": anchors_scored,
            "n_anchors": n_anchors,
            "verdict": verdict,
            "mean_delta": mean_delta,
            "median_delta": median_delta,
            "prefix_tokens": np.array([1 + len(d) for d in demos], dtype=np.int64),
            "truncated_pairs": truncated.reshape(len(ids), n_anchors).sum(axis=1),
            "prefix_tokens_cut": np.where(done, group.cut, 0).reshape(len(ids), n_anchors).sum(axis=1),
            "anchor_tokens_scored": np.where(done, prepared.lengths[group.anchor], 0)
            .reshape(len(ids), n_anchors)
            .sum(axis=1),
        },
        columns=SCORE_COLUMNS,
    )
    if not config.keep_pair_deltas:
        return scores, pd.DataFrame(columns=PAIR_COLUMNS)
    pairs = pd.DataFrame(
        {
            "candidate_id": np.repeat(ids, n_anchors)[done],
            "anchor_id": prepared.ids[group.anchor[done]],
            "one_shot_logprob": group.one_shot[done],
            "delta": delta[done],
        },
        columns=PAIR_COLUMNS,
    )
    return scores, pairs


def score_one_shot(
    loaded: LoadedModel,
    anchors: pd.DataFrame,
    zero_shot: pd.DataFrame,
    candidates: pd.DataFrame,
    config: ScoringConfig,
    progress: Callable[[int, int], None] | None = None,
    anchors_for: Mapping[str, Sequence[str]] | None = None,
) -> Iterator[OneShotChunk]:
    """Golden scores of ``candidates``, yielded ``config.candidates_per_chunk`` candidates at a time.

    Chunks are independent: a caller resuming after a crash passes only the candidates not yet stored.
    ``anchors_for`` (candidate id -> anchor ids) scores only those pairs of each candidate (the adaptive mode's
    rounds): its chunks' pair deltas hold just them, and their scores count just them.
    """
    _check_model(loaded.model)
    prepared = _prepare_anchors(loaded, anchors, config)
    zero = _aligned_zero_shot(prepared, zero_shot)
    column = {anchor: i for i, anchor in enumerate(prepared.ids)}
    template = get_template(config.template)
    total = len(candidates)
    for chunk_start in range(0, total, config.candidates_per_chunk):
        started = time.perf_counter()
        chunk = candidates.iloc[chunk_start : chunk_start + config.candidates_per_chunk]
        demos = demonstration_ids(loaded, chunk, template, config.separator)
        groups, prefix_tokens = [], 0
        ids = chunk["id"].astype(str).to_numpy()
        wanted = None
        if anchors_for is not None:
            wanted = np.zeros((len(chunk), len(prepared.ids)), dtype=bool)
            for row, candidate in enumerate(ids):
                wanted[row, [column[str(a)] for a in anchors_for.get(candidate, ())]] = True
        for start in range(0, len(chunk), config.candidates_per_pass):
            stop = start + config.candidates_per_pass
            group, tokens = _score_group(
                loaded,
                prepared,
                zero,
                demos[start:stop],
                config,
                None if wanted is None else wanted[start:stop].ravel(),
            )
            groups.append(group)
            prefix_tokens += tokens
            if progress is not None:
                progress(chunk_start + min(start + config.candidates_per_pass, len(chunk)), total)
        # Every group lays its pairs out candidate-major, so the chunk's pairs are too.
        merged = _Group(
            candidate=np.repeat(np.arange(len(chunk)), len(prepared.ids)),
            anchor=np.concatenate([g.anchor for g in groups]),
            prefix=np.concatenate([g.prefix for g in groups]),
            cut=np.concatenate([g.cut for g in groups]),
            one_shot=np.concatenate([g.one_shot for g in groups]),
        )
        scores, pairs = _chunk_frames(ids, demos, prepared, zero, merged, config)
        computed = ~np.isnan(merged.one_shot) & (merged.prefix >= 0)
        yield OneShotChunk(
            scores=scores,
            pair_deltas=pairs,
            anchor_tokens=int(prepared.lengths[merged.anchor[computed]].sum()),
            prefix_tokens=prefix_tokens,
            anchor_passes=int(scores["anchors_scored"].sum()),
            anchor_passes_total=len(chunk) * len(prepared.ids),
            seconds=time.perf_counter() - started,
        )


__all__ = [
    "DEFAULT_DTYPE",
    "PAIR_COLUMNS",
    "SCORE_COLUMNS",
    "ZERO_SHOT_COLUMNS",
    "OneShotChunk",
    "ScoringConfig",
    "demonstration_ids",
    "score_one_shot",
    "score_zero_shot",
]

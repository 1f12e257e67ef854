"""Judge backends behind one interface: an OpenAI-compatible HTTP server, or a Hugging Face causal LM
in-process.

A backend only turns rendered prompts into raw outputs (text or next-token log-probs); reading verdicts,
caching and labelling live in ``api``, so both backends behave the same way there.
"""

from __future__ import annotations

import copy
import inspect
import logging
import math
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

import httpx
import torch
from jinja2.exceptions import TemplateError
from transformers import GenerationConfig

from nuggets_pipeline.core.judging.parsing import labels_for
from nuggets_pipeline.core.judging.types import Backend, JudgePrompt, Mode, RawOutput, VerdictKind
from nuggets_pipeline.core.modeling import SMOLLM2, LoadedModel, encode, load_model

log = logging.getLogger(__name__)

DEFAULT_API_KEY_ENV = "NUGGETS_JUDGE_API_KEY"
TOP_LOGPROBS = 20  # the most OpenAI's API returns; AlpacaEval 2's weighted annotator asks for the same


class JudgeRequestError(RuntimeError):
    """A judge request failed for good (retries exhausted, or refused with a 4xx other than 429)."""


class Judge(ABC):
    """A judge model reachable through one backend, answering in one mode."""

    name: str
    backend: Backend
    mode: Mode

    @property
    @abstractmethod
    def cache_key(self) -> str:
        """Everything that decides the judge's answer besides the prompt (never a secret)."""

    @abstractmethod
    def run(self, prompts: Sequence[JudgePrompt]) -> Iterator[tuple[int, RawOutput]]:
        """Yield ``(index into prompts, output)`` as each prompt completes, in any order."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, mode={self.mode!r})"


def _check_mode(mode: str) -> Mode:
    if mode not in ("generate", "probabilities"):
        raise ValueError(f"unknown judge mode {mode!r}; use 'generate' or 'probabilities'")
    return mode  # type: ignore[return-value]


class OpenAIJudge(Judge):
    """Any OpenAI-compatible chat-completions server: OpenAI, vLLM, llama.cpp's server, Ollama.

    The API key is read from the environment variable named ``api_key_env`` at request time and sent only in
    the Authorization header; it is never stored on the judge, logged, or written to results. With the
    variable unset no Authorization header is sent (local servers need none). The default variable is
    project-specific so an OpenAI key is not sent to an arbitrary local server by accident.
    ``header_envs`` adds headers read the same way (header name -> environment variable), for servers that
    want another key header (Azure's ``api-key``, a gateway's token). Every header value sent is redacted from
    error text before that text is cut to length, logged or stored.
    """

    backend: Backend = "openai"

    def __init__(
        self,
        model: str,
        mode: Mode = "generate",
        *,
        base_url: str = "https://api.openai.com/v1",
        api_key_env: str = DEFAULT_API_KEY_ENV,
        name: str | None = None,
        max_tokens: int = 1024,
        concurrency: int = 4,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
        timeout_s: float = 120.0,
        header_envs: dict[str, str] | None = None,
    ) -> None:
        self.model = model
        self.header_envs = dict(header_envs or {})  # names of variables only, never their values
        self.mode = _check_mode(mode)
        self.base_url = base_url.rstrip("/")
        self.api_key_env = api_key_env
        self.name = name or model
        self.max_tokens = max_tokens
        self.concurrency = max(1, concurrency)
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.timeout_s = timeout_s

    @property
    def cache_key(self) -> str:
        # The server is part of the identity: the same model name on two servers may be two different models.
        budget = f"|max_tokens={self.max_tokens}" if self.mode == "generate" else ""
        return f"openai|{self.name}|{self.mode}|{self.model}@{self.base_url}{budget}"

    def run(self, prompts: Sequence[JudgePrompt]) -> Iterator[tuple[int, RawOutput]]:
        if not prompts:
            return
        with httpx.Client(timeout=self.timeout_s) as client:
            pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="judge")
            try:
                futures = {pool.submit(self._complete, client, p): i for i, p in enumerate(prompts)}
                for future in as_completed(futures):
                    yield futures[future], future.result()
            finally:
                # A consumer that stops early (crash, Ctrl-C) must not keep paying for queued requests.
                pool.shutdown(wait=True, cancel_futures=True)

    def _payload(self, prompt: JudgePrompt) -> dict[str, Any]:
        payload: dict[str, Any] = {"model": self.model, "messages": prompt.messages(), "temperature": 0}
        if self.mode == "probabilities":
            payload.update(max_tokens=1, logprobs=True, top_logprobs=TOP_LOGPROBS)
        else:
            payload["max_tokens"] = self.max_tokens
        return payload

    def _complete(self, client: httpx.Client, prompt: JudgePrompt) -> RawOutput:
        try:
            body = self._post(client, self._payload(prompt))
        except JudgeRequestError as error:
            return RawOutput(error=str(error))
        try:
            choice = body["choices"][0]
            if self.mode == "generate":
                return RawOutput(text=choice["message"].get("content") or "")
            content = (choice.get("logprobs") or {}).get("content") or []
            if not content:
                return RawOutput(error="server returned no logprobs; it may not support them: use mode='generate'")
            top: dict[str, float] = {}
            for entry in content[0].get("top_logprobs") or [content[0]]:
                top.setdefault(entry["token"], float(entry["logprob"]))
            return RawOutput(top_logprobs=top)
        except (KeyError, IndexError, TypeError, AttributeError, ValueError) as error:
            return RawOutput(error=f"malformed chat-completions response ({type(error).__name__}: {error})")

    def _post(self, client: httpx.Client, payload: dict[str, Any]) -> dict[str, Any]:
        key = os.environ.get(self.api_key_env) or ""
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        for header, variable in self.header_envs.items():
            if value := os.environ.get(variable):
                headers[header] = value
        secrets = [key, *headers.values()]
        url = f"{self.base_url}/chat/completions"
        problem = ""
        for attempt in range(self.max_retries + 1):
            retry_after: float | None = None
            try:
                response = client.post(url, json=payload, headers=headers)
            except httpx.TransportError as error:  # timeouts, refused or dropped connections
                problem = f"{type(error).__name__}"
            else:
                if response.status_code == 200:
                    try:
                        return response.json()
                    except ValueError:
                        raise JudgeRequestError("judge server answered 200 with a body that is not JSON") from None
                # Redact first, then cut: a key cut in two by the limit would otherwise leave its prefix.
                problem = f"HTTP {response.status_code}: {redact(response.text, secrets)[:300]}"
                if response.status_code != 429 and response.status_code < 500:
                    raise JudgeRequestError(f"judge server refused the request: {problem}")
                retry_after = _seconds(response.headers.get("retry-after"))
            if attempt < self.max_retries:
                delay = min(self.max_backoff_s, max(self.backoff_s * 2**attempt, retry_after or 0.0))
                log.warning("judge request to %s failed (%s); retry %d in %.2fs", url, problem, attempt + 1, delay)
                time.sleep(delay)
        raise JudgeRequestError(f"judge server failed {self.max_retries + 1} attempts; last: {problem}")


MIN_SECRET_PREFIX = 8  # a fragment this long of a secret is redacted too (a server may echo a cut copy)


def redact(text: str, secrets: Sequence[str]) -> str:
    """``text`` with every secret, and every fragment of one that starts like it, replaced by ``***``.

    A misbehaving server or proxy may echo request headers (the Authorization header above all) in an error
    body, whole or cut short; both go. Call it before truncating, so a secret cut by the limit cannot survive.
    """
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, "***")
        if len(secret) < MIN_SECRET_PREFIX:
            continue
        head, start = secret[:MIN_SECRET_PREFIX], 0
        while (found := text.find(head, start)) >= 0:
            end = found + MIN_SECRET_PREFIX
            while end < len(text) and end - found < len(secret) and text[end] == secret[end - found]:
                end += 1
            text = text[:found] + "***" + text[end:]
            start = found + 3
    return text


def _seconds(header: str | None) -> float | None:
    try:
        return float(header) if header else None
    except ValueError:
        return None  # an HTTP date; the exponential back-off applies instead


class LocalJudge(Judge):
    """A Hugging Face causal LM run in-process (default SmolLM2-135M-Instruct), batched.

    ``probabilities`` (the default) reads the verdict from the next-token distribution after the prompt's
    ``verdict_prefix``. Tokenizers that split "10" into "1","0" get one extra decoding step: the mass of the
    first token "1" is split between rating 10 (P("0" | "1")) and rating 1 (the rest), so 10 is neither lost
    nor confused with 1. ``generate`` decodes greedily and leaves the verdict to the text parser.
    """

    backend: Backend = "local"

    def __init__(
        self,
        model: str | LoadedModel = SMOLLM2,
        mode: Mode = "probabilities",
        *,
        name: str | None = None,
        batch_size: int = 4,
        max_new_tokens: int = 256,
        dtype: str = "float32",
        device: str = "cpu",
    ) -> None:
        self.loaded = model if isinstance(model, LoadedModel) else load_model(model, dtype=dtype, device=device)
        self.mode = _check_mode(mode)
        self.name = name or self.loaded.name
        self.batch_size = max(1, batch_size)
        self.max_new_tokens = max_new_tokens
        self._keeps_logits = "logits_to_keep" in inspect.signature(self.loaded.model.forward).parameters

    @property
    def cache_key(self) -> str:
        # The fingerprint covers the weights and dtype, so a retrained checkpoint at the same path misses.
        budget = f"|max_new_tokens={self.max_new_tokens}" if self.mode == "generate" else ""
        return f"local|{self.name}|{self.mode}|{self.loaded.fingerprint}{budget}"

    def render(self, prompt: JudgePrompt) -> str:
        """The exact text the model reads: chat template, then the verdict prefix in probabilities mode."""
        tokenizer = self.loaded.tokenizer
        if tokenizer.chat_template:
            try:
                text = tokenizer.apply_chat_template(prompt.messages(), tokenize=False, add_generation_prompt=True)
            except TemplateError:
                # Some templates (Gemma's) reject a system turn; it then opens the user turn instead.
                merged = [{"role": "user", "content": "\n\n".join(m["content"] for m in prompt.messages())}]
                text = tokenizer.apply_chat_template(merged, tokenize=False, add_generation_prompt=True)
        else:
            text = "".join(f"{m['content']}\n\n" for m in prompt.messages())
        return text + prompt.verdict_prefix if self.mode == "probabilities" else text

    def run(self, prompts: Sequence[JudgePrompt]) -> Iterator[tuple[int, RawOutput]]:
        tokenizer = self.loaded.tokenizer
        ids = [encode(tokenizer, self.render(p)) for p in prompts]
        # Similar lengths share a batch, so little compute goes to padding.
        order = sorted(range(len(prompts)), key=lambda i: len(ids[i]))
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            if self.mode == "generate":
                outputs = self._generate([ids[i] for i in batch])
            else:
                outputs = self._distributions([ids[i] for i in batch], [prompts[i] for i in batch])
            yield from zip(batch, outputs, strict=True)

    def _left_pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Left padding keeps every row's last real token in the last column; positions skip the padding."""
        width = max(len(r) for r in rows)
        pad = self.loaded.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=self.loaded.device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=self.loaded.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return input_ids, mask, positions

    @torch.inference_mode()
    def _generate(self, rows: list[list[int]]) -> list[RawOutput]:
        input_ids, mask, _ = self._left_pad(rows)
        tokenizer = self.loaded.tokenizer
        config = GenerationConfig(
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        out = self.loaded.model.generate(input_ids=input_ids, attention_mask=mask, generation_config=config)
        texts = tokenizer.batch_decode(out[:, input_ids.shape[1] :], skip_special_tokens=True)
        return [RawOutput(text=t) for t in texts]

    def label_tokens(self, prefix: str, kind: VerdictKind) -> dict[str, list[int]]:
        """Each verdict label's token ids as they follow ``prefix`` (read in context)."""
        tokenizer = self.loaded.tokenizer
        base = encode(tokenizer, prefix)
        tokens = {}
        for label in labels_for(kind):
            joined = encode(tokenizer, prefix + label)
            tokens[label] = joined[len(base) :] if joined[: len(base)] == base else encode(tokenizer, label)
        return tokens

    @torch.inference_mode()
    def _distributions(self, rows: list[list[int]], prompts: list[JudgePrompt]) -> list[RawOutput]:
        kind, prefix = prompts[0].kind, prompts[0].verdict_prefix
        if any(p.kind != kind or p.verdict_prefix != prefix for p in prompts):
            # A batch shares its label tokens; the api never mixes prompt families in one call.
            raise ValueError("one run() must not mix verdict kinds or verdict prefixes")
        labels = self.label_tokens(prefix, kind)
        too_long = [label for label, ids in labels.items() if len(ids) > 2]
        if too_long:
            raise ValueError(f"verdict labels {too_long} need more than two tokens in this tokenizer")
        input_ids, mask, positions = self._left_pad(rows)
        # Only the last position's logits matter; skipping the vocabulary projection elsewhere saves ~15%.
        keep = {"logits_to_keep": 1} if self._keeps_logits else {}
        out = self.loaded.model(
            input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True, **keep
        )
        first = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)
        candidates = first[:, [ids[0] for ids in labels.values()]].clone()
        names = list(labels)

        # Two-token labels ("10" as "1","0"): one more step after their first token, from the cached prefix.
        groups: dict[int, list[str]] = {}
        for label, ids in labels.items():
            if len(ids) == 2:
                groups.setdefault(ids[0], []).append(label)
        for head, group in groups.items():
            past = out.past_key_values if len(groups) == 1 else copy.deepcopy(out.past_key_values)
            step = self.loaded.model(
                input_ids=torch.full((len(rows), 1), head, device=input_ids.device),
                attention_mask=torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1),
                position_ids=positions[:, -1:] + 1,
                past_key_values=past,
            )
            second = torch.log_softmax(step.logits[:, -1, :].float(), dim=-1)
            continued = torch.zeros(len(rows), device=second.device)
            for label in group:
                tail = second[:, labels[label][1]]
                candidates[:, names.index(label)] = first[:, head] + tail
                continued += tail.exp()
            # A one-token label equal to the shared head keeps only the mass that does not continue.
            for label, ids in labels.items():
                if ids == [head]:
                    rest = (1.0 - continued).clamp(min=1e-12)
                    candidates[:, names.index(label)] = first[:, head] + rest.log()

        top = first.topk(TOP_LOGPROBS, dim=-1)
        tokenizer = self.loaded.tokenizer
        outputs = []
        for row in range(len(rows)):
            top_logprobs: dict[str, float] = {}
            for logprob, token_id in zip(top.values[row].tolist(), top.indices[row].tolist(), strict=True):
                top_logprobs.setdefault(tokenizer.decode([token_id]), round(logprob, 6))
            cands = {
                label: float(value)
                for label, value in zip(names, candidates[row].tolist(), strict=True)
                if math.isfinite(value)
            }
            outputs.append(RawOutput(top_logprobs=top_logprobs, candidates=cands))
        return outputs


def make_judge(
    backend: Backend, model: str | LoadedModel | None = None, mode: Mode | None = None, **options: Any
) -> Judge:
    """A judge by backend name. Default modes: ``probabilities`` for local models (small models rarely write
    a parseable verdict), ``generate`` for servers (FastChat's explain-then-rate protocol)."""
    if backend == "local":
        return LocalJudge(model or SMOLLM2, mode or "probabilities", **options)
    if backend == "openai":
        if not isinstance(model, str):
            raise ValueError("the openai backend needs the served model's name, e.g. model='gpt-4o'")
        return OpenAIJudge(model, mode or "generate", **options)
    raise ValueError(f"unknown judge backend {backend!r}; use 'local' or 'openai'")

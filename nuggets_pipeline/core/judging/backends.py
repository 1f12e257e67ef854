"""Judge backends behind one interface: an OpenAI-compatible HTTP server, or a Hugging Face causal LM
in-process.

A backend only turns rendered prompts into raw outputs (text or next-token log-probs); reading verdicts,
caching and labelling live in ``api``, so both backends behave the same way there.
"""

from __future__ import annotations

import base64
import binascii
import copy
import inspect
import itertools
import logging
import math
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any
from urllib.parse import quote, quote_plus

import httpx
import torch
from jinja2.exceptions import TemplateError
from transformers import GenerationConfig

from nuggets_pipeline.core.judging.parsing import labels_for
from nuggets_pipeline.core.judging.types import Backend, JudgePrompt, Mode, RawOutput, VerdictKind
from nuggets_pipeline.core.modeling import SMOLLM2, LoadedModel, encode, load_model
from nuggets_pipeline.core.settings import JUDGE_MAX_RETRIES, JUDGE_TIMEOUT_S, refuse_url_credentials

log = logging.getLogger(__name__)

DEFAULT_API_KEY_ENV = "NUGGETS_JUDGE_API_KEY"
ERROR_TEXT_LIMIT = 300  # characters of an error body kept, after redaction
ERROR_READ_LIMIT = 65_536  # characters of an error body redacted at all: a huge error page costs no seconds
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
    error text before that text is cut to length, logged or stored (see ``redact``). A ``base_url`` with
    credentials in it (``user:key@host``) is refused: they would be logged and sent unredacted.
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
        max_retries: int = JUDGE_MAX_RETRIES,
        backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
        timeout_s: float = JUDGE_TIMEOUT_S,
        header_envs: dict[str, str] | None = None,
    ) -> None:
        if timeout_s <= 0 or max_retries < 0:
            raise ValueError(f"judge timeout_s must be > 0 and max_retries >= 0, got {timeout_s} and {max_retries}")
        self.model = model
        self.header_envs = dict(header_envs or {})  # names of variables only, never their values
        self.mode = _check_mode(mode)
        # urlsplit ends the authority at "/", "?" or "#" as httpx does, so what it finds is what httpx would send.
        self.base_url = refuse_url_credentials(base_url).rstrip("/")
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

    def _headers(self) -> tuple[dict[str, str], list[str]]:
        """The request headers, read from the environment now, and the secrets among them (each value, the key)."""
        key = os.environ.get(self.api_key_env) or ""
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        for header, variable in self.header_envs.items():
            if value := os.environ.get(variable):
                headers[header] = value
        return headers, [key, *headers.values()]

    def _complete(self, client: httpx.Client, prompt: JudgePrompt) -> RawOutput:
        headers, secrets = self._headers()
        try:
            body = self._post(client, self._payload(prompt), headers, secrets)
        except JudgeRequestError as error:
            return RawOutput(error=str(error))
        try:
            choice = body["choices"][0]
            if self.mode == "generate":
                # An answer that echoes the request is stored as raw text: it is redacted like an error body.
                return RawOutput(text=redact(choice["message"].get("content") or "", secrets))
            content = (choice.get("logprobs") or {}).get("content") or []
            if not content:
                return RawOutput(error="server returned no logprobs; it may not support them: use mode='generate'")
            top: dict[str, float] = {}
            for entry in content[0].get("top_logprobs") or [content[0]]:
                top.setdefault(redact(entry["token"], secrets), float(entry["logprob"]))  # stored, like text
            return RawOutput(top_logprobs=top)
        except (KeyError, IndexError, TypeError, AttributeError, ValueError) as error:
            # A ValueError quotes the value it could not read, which an echoing server may have filled with the key.
            problem = redact(f"{type(error).__name__}: {error}", secrets)[:ERROR_TEXT_LIMIT]
            return RawOutput(error=f"malformed chat-completions response ({problem})")

    def _post(
        self, client: httpx.Client, payload: dict[str, Any], headers: dict[str, str], secrets: Sequence[str]
    ) -> dict[str, Any]:
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
                text = redact(response.text[:ERROR_READ_LIMIT], secrets)[:ERROR_TEXT_LIMIT]
                problem = f"HTTP {response.status_code}: {text}"
                if response.status_code != 429 and response.status_code < 500:
                    raise JudgeRequestError(f"judge server refused the request: {problem}")
                retry_after = _seconds(response.headers.get("retry-after"))
            if attempt < self.max_retries:
                delay = min(self.max_backoff_s, max(self.backoff_s * 2**attempt, retry_after or 0.0))
                log.warning("judge request to %s failed (%s); retry %d in %.2fs", url, problem, attempt + 1, delay)
                time.sleep(delay)
        raise JudgeRequestError(f"judge server failed {self.max_retries + 1} attempts; last: {problem}")


MIN_SECRET_FRAGMENT = 8  # any piece this long of a secret (or of its encodings) is redacted, wherever it starts


def _base64_forms(value: str) -> set[str]:
    """``value``'s base64 as it appears inside any longer base64 text, standard and URL-safe alphabets.

    Base64 turns 3 bytes into 4 characters, so the same value encodes differently at each of the 3 offsets it may
    sit at (``user:key`` puts the key at offset 5). At each offset only the characters made of the value's own
    bytes are kept: the first group when shifted, and a last partial one, also depend on the bytes around it.
    The value's standalone encoding, padding included, is kept whole too.
    """
    data = value.encode()
    standalone = base64.b64encode(data).decode()
    forms = {standalone}
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + data).decode()
        start = 4 if shift else 0
        end = len(encoded) - 4 if (shift + len(data)) % 3 else len(encoded)
        forms.add(encoded[start:end])
    return {f for form in forms for f in (form, form.translate(str.maketrans("+/", "-_")))}


def _decoded_credential(value: str) -> list[str]:
    """What a ``<scheme> <credential>`` header value carries: the credential, and for Basic auth its decoded
    ``user:password`` and the password (a server may decode the header before echoing it)."""
    scheme, _, credential = value.partition(" ")
    if not credential:
        return []
    found = [credential]
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(credential, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return found
        found += [decoded, decoded.partition(":")[2]]
    return found


def secret_forms(secrets: Iterable[str]) -> set[str]:
    """Every form a secret may come back in: as sent; the credential inside a header value (``Bearer KEY``,
    ``Basic <base64 of user:key>`` decoded); each of these URL-encoded and base64-encoded (``_base64_forms``).
    Derived forms shorter than ``MIN_SECRET_FRAGMENT`` are dropped: a 2-byte password would blank every
    occurrence of two common letters."""
    given = {s for s in secrets if s}
    plain = set(given)
    for secret in given:
        plain.update(_decoded_credential(secret))
    forms = set(plain)
    for value in plain:
        forms.update({quote(value, safe=""), quote_plus(value), *_base64_forms(value)})
    return {f for f in forms if f in given or len(f) >= MIN_SECRET_FRAGMENT}


def redact(text: str, secrets: Sequence[str]) -> str:
    """``text`` with every piece of 8 or more characters of any secret, or of any of its encodings
    (``secret_forms``), replaced by ``***``, wherever in the secret the piece starts; a secret shorter than 8
    characters goes where it appears whole.

    A misbehaving server or proxy may echo request headers (the Authorization header above all) in an error
    body: whole, cut at either end, from the middle, base64-encoded or URL-encoded; all go. Every position of
    ``text`` where an 8-character window of some form starts is covered, so a copy of any length >= 8 is
    covered end to end, and runs that touch become one ``***``. Call it before truncating, so a secret cut by
    the limit cannot survive.
    """
    windows: dict[int, set[str]] = {}  # window width -> every window of that width of every form
    for form in secret_forms(secrets):
        width = min(MIN_SECRET_FRAGMENT, len(form))
        windows.setdefault(width, set()).update(form[i : i + width] for i in range(len(form) - width + 1))
    hidden = [False] * len(text)
    for width, pieces in windows.items():
        for start in range(len(text) - width + 1):
            if text[start : start + width] in pieces:
                hidden[start : start + width] = [True] * width
    out = []
    position = 0
    for is_hidden, run in itertools.groupby(hidden):
        length = len(list(run))
        out.append("***" if is_hidden else text[position : position + length])
        position += length
    return "".join(out)


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

"""Every ``NUGGETS_*`` environment variable, in one place: its type, default and meaning, validated once.

``get_settings()`` reads the environment into one typed, frozen :class:`Settings`. It is cached per environment
(the values of the declared variables), so a value is parsed and validated once, yet a test or a sensor tick that
changes a variable sees the new value without clearing anything. The definitions are built from one ``Settings``
(``definitions.build_defs``), so what is fixed when the code location loads (the executor, the backfill policy,
the sensor intervals, the crons) is checked on the built assets, sensors and executor.

A bad value raises :class:`SettingsError` naming the variable, the value and what it means; raised while the
definitions load, it stops the code location. An empty variable counts as unset (``NUGGETS_HOME=`` = default).

``NUGGETS_DEPLOYMENT`` names a profile (in the spirit of Dagster's ``resources_by_deployment_name``): ``cluster``
changes the defaults a Kubernetes deployment needs; a variable set explicitly always wins over its profile.

Secrets are not settings: the judge's API key is read from the environment at request time, from the variable
named by the judge resource's ``api_key_env`` (``NUGGETS_JUDGE_API_KEY`` by default), so it never sits here.
No Dagster import: core code reads its settings here too. ``python -m nuggets_pipeline.core.settings`` prints
docs/settings.md.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from nuggets_pipeline.core.env import PREFIX, env_name

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")

# The defaults each deployment profile changes; a variable set in the environment wins over its profile.
PROFILES: dict[str, dict[str, Any]] = {
    "local": {},
    # What deploy/ ran with before profiles existed (NUGGETS_EXECUTOR=k8s, one shard per run, NUGGETS_DEVICE=cuda):
    # a pod per step (GPU pods for the model steps), a backfill fanned out into a run (a pod) per shard.
    "cluster": {"executor": "k8s", "shards_per_run": 1, "device": "cuda"},
}

# Read at request time by the judge, never stored in Settings (documented beside them in docs/settings.md).
SECRETS = {
    "NUGGETS_JUDGE_API_KEY": "API key of the openai judge backend (the variable the judge resource's `api_key_env` "
    "names); read when a request is sent, never logged or stored",
}


# The openai judge's patience. A dead server costs at most (1 + retries) x timeout per request: 4 x 60 s, where it was
# 6 x 120 s. 60 s is generous for one chat completion of 1,024 tokens; 3 retries ride out a rate limit's back-off.
JUDGE_TIMEOUT_S = 60.0
JUDGE_MAX_RETRIES = 3
# More failed judgments than this share fail an evaluation asset: the score of the rest would describe half a set.
JUDGE_MAX_FAILED_FRACTION = 0.5

# user:password@ in a URL's authority (everything between "//" and the next "/", "?", "#" or space).
USERINFO = re.compile(r"(//)[^/?#\s]*@")


def hide_userinfo(text: str) -> str:
    """``text`` with the credentials of every URL in it replaced by ``***``: ``http://***@host/v1``."""
    return USERINFO.sub(r"\1***@", text)


def refuse_url_credentials(url: str) -> str:
    """``url`` unchanged, unless it carries credentials (``http://user:key@host``): httpx would send them as a Basic
    Authorization header, and every log line and error naming the URL would show them. Refused, never stripped:
    a key silently dropped would only fail later as a 401. The message never shows the credentials."""
    try:
        authority = urlsplit(url).netloc
    except ValueError as error:  # a malformed IPv6 host; urlsplit's message does not quote the URL
        raise ValueError(f"the judge base URL {hide_userinfo(url)!r} cannot be parsed ({error})") from None
    if "@" in authority:
        raise ValueError(
            f"the judge base URL {hide_userinfo(url)!r} carries credentials (user:password@host), which would be "
            "logged with every retry and sent as a Basic header; remove them from the URL and put the key in the "
            "environment variable the judge's api_key_env names (default NUGGETS_JUDGE_API_KEY; sent as "
            "'Authorization: Bearer'), or send another header through the judge's header_envs"
        )
    return url


def require_one_of(field: str, value: str, allowed: Sequence[str]) -> str:
    """``value`` when ``allowed`` holds it, else the ValueError a pydantic field validator reports for ``field``,
    naming the choices in the order given."""
    if value not in allowed:
        raise ValueError(f"{field} must be one of {list(allowed)}, got {value!r}")
    return value


class SettingsError(ValueError):
    """A ``NUGGETS_*`` variable has a value that cannot be used; the message names it."""


class Settings(BaseSettings):
    """The pipeline's settings. Field ``x`` is the environment variable ``NUGGETS_X``."""

    model_config = SettingsConfigDict(
        alias_generator=env_name,  # exact, case-sensitive names, as os.environ.get read them before
        case_sensitive=True,
        validate_by_name=True,  # Settings(shards_per_run=4) in tests and build_defs callers
        validate_by_alias=True,
        env_ignore_empty=True,
        frozen=True,
        protected_namespaces=(),
        extra="ignore",
    )

    deployment: Literal["local", "cluster"] = Field(
        default="local",
        description="deployment profile: `cluster` defaults to the k8s executor, one shard per run and `cuda`",
    )
    # Where things live.
    home: Path | None = Field(
        default=None,
        description="root of every output (warehouse, catalog, model cache, checkpoints, Dagster storage); "
        "unset: `./.nuggets_home` in the repository",
    )
    data_dir: Path | None = Field(
        default=None, description="the shipped `data/` folder, for installs outside the repository; unset: `./data`"
    )
    model_cache: Path | None = Field(
        default=None, description="safetensors cache of converted models; unset: `<home>/models`"
    )
    incoming_dir: Path | None = Field(
        default=None, description="folder the `incoming_data` sensor watches for data files; unset: `<home>/incoming`"
    )
    dagster_storage: Path | None = Field(
        default=None,
        description="Dagster's run, event and schedule storage (read by dagster.yaml); the CLI and Makefile set "
        "`<home>/dagster`",
    )
    # Models and devices.
    scoring_model: str = Field(
        default="smollm2-135m-instruct", description="model that scores the pool: preset, HF id or local path"
    )
    scoring_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto",
        description="dtype of the scoring model; `auto`: bfloat16 where the hardware computes it natively, else "
        "float32 (set float32 to score bit-for-bit the same everywhere)",
    )
    scoring_mode: Literal["exact", "decision", "adaptive"] = Field(
        default="exact",
        description="how one-shot scoring spends anchors: `exact` every anchor for every candidate; `decision` stops "
        "once a threshold verdict is certain (scoring.decision_threshold); `adaptive` screens every candidate on a "
        "few anchors, then gives more only to those whose interval straddles the selection's cut",
    )
    training_model: str = Field(
        default="smollm2-135m-instruct", description="model that is fine-tuned (may differ: weak-to-strong)"
    )
    judge_backend: Literal["local", "openai"] = Field(
        default="local", description="`local` (an in-process HF model) or `openai` (any compatible API)"
    )
    judge_model: str = Field(
        default="smollm2-135m-instruct", description="judge: local preset/path, or the served model name"
    )
    judge_base_url: str = Field(
        default="https://api.openai.com/v1",
        description="openai judge backend: the server, without credentials (the key goes in `NUGGETS_JUDGE_API_KEY`)",
    )
    judge_timeout_s: float = Field(
        default=JUDGE_TIMEOUT_S,
        gt=0,
        description="openai judge backend: seconds a request may wait on the server (to connect, or for the next "
        "bytes of the answer) before that try is abandoned",
    )
    judge_max_retries: int = Field(
        default=JUDGE_MAX_RETRIES,
        ge=0,
        description="openai judge backend: retries of a request that timed out, was dropped or got 429/5xx, with "
        "back-off from 1 s; a dead server costs at most (1 + retries) x timeout per request",
    )
    judge_max_failed_fraction: float = Field(
        default=JUDGE_MAX_FAILED_FRACTION,
        ge=0,
        le=1,
        description="`mt_bench_results` and `alpaca_eval_results` fail when more than this share of their "
        "judgments failed (all failed: always); fewer failures pass with a warning check",
    )
    device: str | None = Field(
        default=None,
        description="one device for every model: `cpu`, `cuda`, `cuda:N` or `auto`; unset: `auto` in the pipeline, "
        "`cpu` in the study (reproducible figures)",
    )
    threads: int | None = Field(default=None, ge=1, description="torch CPU threads per process; unset: every core")
    simulated_devices: int | None = Field(
        default=None, ge=0, description="replace the GPU list by N simulated devices (claims tested without GPUs)"
    )
    device_wait_s: float = Field(
        default=600.0, ge=0, description="seconds a model step waits to claim a device (0: fail at once)"
    )
    # Operations: sensors, schedules, automation, execution.
    incoming_settle_s: float = Field(
        default=10.0, ge=0, description="a file must be unchanged this long (seconds) before the sensor reads it"
    )
    sensor_interval_s: float = Field(default=30.0, ge=1, description="seconds between sensor ticks")
    rescore_cron: str = Field(
        default="0 2 * * *", description="when the instruction sources are re-read for new rows (schedule)"
    )
    selection_cron: str = Field(default="0 3 * * *", description="when `golden_subset` is rebuilt after new scores")
    selection_timezone: str = Field(default="UTC", description="time zone of both crons")
    executor: Literal["multiprocess", "in_process", "k8s"] = Field(
        default="multiprocess", description="how a run executes its steps (`k8s`: a pod per step)"
    )
    max_concurrent_steps: int = Field(
        default=2, ge=1, description="steps at once in one run with the multiprocess executor"
    )
    shards_per_run: int = Field(
        default=1,
        ge=1,
        description="shards one backfill run scores: 1 fans a backfill out (a run, a pod, per shard); "
        "N scores N shards in one run (one model load)",
    )
    training_gpus: int = Field(
        default=1,
        ge=1,
        description="GPUs of the `finetuned_model` pod with the k8s executor (a launched run, `launcher: "
        "accelerate` or `torchrun`, starts one process per GPU it sees); every other model step gets one",
    )

    @model_validator(mode="before")
    @classmethod
    def _profile_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        profile = data.get("deployment", data.get(env_name("deployment"), "local"))
        for field, value in PROFILES.get(profile, {}).items():
            if field not in data and env_name(field) not in data:
                data[field] = value
        return data

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str | None) -> str | None:
        if value is not None and not DEVICE_PATTERN.match(value):
            raise ValueError("use cpu, cuda, cuda:N or auto")
        return value

    @field_validator("judge_base_url")
    @classmethod
    def _no_credentials_in_url(cls, value: str) -> str:
        return refuse_url_credentials(value)

    @field_validator("selection_timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("unknown time zone (use an IANA name such as UTC or Europe/Paris)") from None
        return value


def declared_variables() -> list[str]:
    return [env_name(name) for name in Settings.model_fields]


@functools.lru_cache(maxsize=32)
def _settings_for(environment: tuple[str | None, ...]) -> Settings:
    del environment  # the cache key only: Settings() reads the same values from os.environ
    try:
        return Settings()
    except ValidationError as error:
        raise SettingsError(_explain(error)) from None


def get_settings() -> Settings:
    """The settings of the current environment, validated once per distinct set of values."""
    return _settings_for(tuple(os.environ.get(name) for name in declared_variables()))


def _explain(error: ValidationError) -> str:
    lines = []
    for problem in error.errors():
        field = str(problem["loc"][0]) if problem["loc"] else ""
        field = field.removeprefix(PREFIX).lower()
        variable = env_name(field)
        info = Settings.model_fields.get(field)
        meaning = f" ({info.description})" if info is not None and info.description else ""
        message = problem["msg"].removeprefix("Value error, ")
        # The value as set, less any URL credentials: this message reaches the UI and the daemon's logs.
        shown = os.environ.get(variable)
        shown = hide_userinfo(shown) if shown is not None else None
        lines.append(f"{variable}={shown!r}: {message}{meaning}")
    return "invalid NUGGETS_* settings:\n  " + "\n  ".join(lines)


def render_table() -> str:
    """docs/settings.md: every variable, its default and meaning, rendered from the Settings fields."""
    rows = ["| Variable | Default | Meaning |", "| --- | --- | --- |"]
    for name, info in Settings.model_fields.items():
        value = f"{info.default:g}" if isinstance(info.default, float) else info.default
        default = "unset" if value is None else f"`{value}`"
        if PROFILES["cluster"].get(name) is not None:
            default += f" (cluster: `{PROFILES['cluster'][name]}`)"
        rows.append(f"| `{env_name(name)}` | {default} | {info.description} |")
    secrets = [f"| `{name}` | unset | {meaning} |" for name, meaning in SECRETS.items()]
    return "\n".join(
        [
            "# Settings",
            "",
            "<!-- Generated by `python -m nuggets_pipeline.core.settings > docs/settings.md` from",
            "     nuggets_pipeline/core/settings.py; a test checks it is current. -->",
            "",
            "Every `NUGGETS_*` environment variable the pipeline reads. An empty value counts as unset. A bad value",
            "stops the code location with a message naming the variable. `NUGGETS_DEPLOYMENT=cluster` changes the",
            "defaults marked *cluster*; a variable set explicitly always wins.",
            "",
            *rows,
            "",
            "Secrets are read at request time from the environment, never stored with the settings:",
            "",
            "| Variable | Default | Meaning |",
            "| --- | --- | --- |",
            *secrets,
            "",
        ]
    )


if __name__ == "__main__":
    print(render_table(), end="")

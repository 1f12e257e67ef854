"""What `finetuned_model` launches for multi-process training: `accelerate launch ... -m THIS_MODULE`
(or torchrun) starts this module once per process, each a rank of the same `train_sft` run.

Rank 0 talks to Dagster through Pipes (``dagster_pipes``, not Dagster itself): every progress line of the core
(step, loss, lr, throughput) becomes a log event of the run, and the run's summary (losses, throughput, the
checkpoint folder) is reported as a custom message the asset turns into its materialisation. The other ranks train
and stay quiet. Run outside Dagster (no Pipes environment), it trains and prints the summary as JSON.

The examples arrive as the exact Parquet frame the asset selected and the configuration as JSON, so the launched
run trains on the same subset with the same settings as the single-process path would.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

LAUNCH_MODULE = "nuggets_pipeline.core.training_launch"


def config_to_json(config: Any) -> str:
    return json.dumps(dataclasses.asdict(config))


def config_from_json(text: str) -> Any:
    from nuggets_pipeline.core.training import TrainingConfig

    fields = json.loads(text)
    fields["lora_target_modules"] = tuple(fields.get("lora_target_modules", ()))
    return TrainingConfig(**fields)


def summary_of(result: Any) -> dict[str, Any]:
    """The JSON summary the asset reads back (the same dict as `TrainingResult.to_dict`, made JSON-safe)."""
    return json.loads(json.dumps(result.to_dict(), default=str))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m {LAUNCH_MODULE}", description=__doc__)
    parser.add_argument("--base-model", required=True)
    parser.add_argument("--examples", required=True, type=Path, help="Parquet: id, instruction, input, output")
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--variant", required=True)
    parser.add_argument("--subset-hash", required=True)
    parser.add_argument("--config-json", required=True, help="TrainingConfig fields as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from dagster_pipes import DAGSTER_PIPES_CONTEXT_ENV_VAR, open_dagster_pipes

    from nuggets_pipeline.core.training import train_sft

    args = build_parser().parse_args(argv)
    examples = pd.read_parquet(args.examples)
    config = config_from_json(args.config_json)

    def train(log: Any = None) -> Any:
        return train_sft(args.base_model, examples, args.output, config, args.variant, args.subset_hash, log=log)

    # The launcher sets RANK for every process it starts; only the main one opens the Pipes channel (several
    # writers would interleave their messages and each close it).
    main_process = os.environ.get("RANK", "0") == "0"
    if main_process and DAGSTER_PIPES_CONTEXT_ENV_VAR in os.environ:
        with open_dagster_pipes() as pipes:
            result = train(log=pipes.log.info)
            pipes.report_custom_message(summary_of(result))
        return 0
    result = train()
    if main_process:
        print(json.dumps(summary_of(result), indent=2), file=sys.stdout, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

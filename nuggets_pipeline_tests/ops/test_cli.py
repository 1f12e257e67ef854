"""The demo command's stages ask for assets and configuration the definitions really have."""

import dagster as dg
import pytest

from nuggets_pipeline.cli import build_parser, demo_stages
from nuggets_pipeline.definitions import defs


@pytest.mark.parametrize("argv", [["demo"], ["demo", "--threshold", "0.8", "--candidates", "12", "--anchors", "3"]])
def test_every_demo_stage_config_validates(argv: list[str]) -> None:
    stages = demo_stages(build_parser().parse_args(argv))
    assert [s.name for s in stages] == [
        "ingest",
        "anchors",
        "zero-shot",
        "one-shot",
        "select",
        "train",
        "evaluate",
        "report",
    ]
    for stage in stages:
        job = dg.define_asset_job(f"demo_{stage.name.replace('-', '_')}", selection=stage.selection)
        checked = dg.Definitions(
            assets=list(defs.assets), asset_checks=list(defs.asset_checks), jobs=[job], resources=dict(defs.resources)
        )
        result = dg.validate_run_config(checked.resolve_job_def(job.name), {"ops": stage.ops_config})
        assert result["ops"].keys() >= stage.ops_config.keys()


def test_a_misspelt_field_is_refused() -> None:
    stage = next(s for s in demo_stages(build_parser().parse_args(["demo"])) if s.name == "anchors")
    stage.ops_config["anchor_set"]["config"]["kmeans_pool"] = 10
    job = dg.define_asset_job("demo_anchors_typo", selection=stage.selection)
    checked = dg.Definitions(assets=list(defs.assets), jobs=[job], resources=dict(defs.resources))
    with pytest.raises(dg.DagsterInvalidConfigError, match="kmeans_pool"):
        dg.validate_run_config(checked.resolve_job_def(job.name), {"ops": stage.ops_config})

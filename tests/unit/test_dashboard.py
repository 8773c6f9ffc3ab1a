"""The Grafana dashboard in deploy/ names only metrics that ucloud exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry

import ucloud_api.metrics  # noqa: F401 (registers the API's metrics)
import ucloud_common.metrics  # noqa: F401
import ucloud_scheduler.metrics  # noqa: F401
from tests.helpers.metrics import parse
from tests.integration.test_follow import a_vm
from ucloud_common.metrics import write_textfile
from ucloud_common.vmstats import DiskIO, NicIO, Usage
from ucloud_filescan.scan import Report as FilescanReport
from ucloud_imagescanner.scanner import Report as ImagescannerReport
from ucloud_vm.metrics import AgentCollector

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "ucloud-dashboard.json"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def exported(registries: list[CollectorRegistry]) -> set[str]:
    """Every sample name the registries can answer (labelled metrics included before any child exists)."""
    names = set()
    for registry in registries:
        for family in registry.collect():
            names |= {family.name + suffix for suffix in SUFFIXES.get(family.type, ("",))}
    return names


def test_every_expression_names_exported_metrics(tmp_path: Path) -> None:
    agent = CollectorRegistry()
    agent.register(AgentCollector(lambda: [a_vm("u1")],
                                  lambda: {"u1": Usage(disks={"disk0": DiskIO()}, nics={"m": NicIO()})}))
    names = exported([REGISTRY, agent])
    for job, report in (("filescan", FilescanReport()), ("imagescanner", ImagescannerReport())):
        path = write_textfile(tmp_path, job, report.figures())
        assert path is not None
        names |= {name for name, _ in parse(path.read_text())}
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert expressions
    for expr in expressions:
        used = set(re.findall(r"\bucloud_[a-z0-9_]+", expr))
        assert used, expr
        assert used <= names, f"{expr}: {sorted(used - names)} exported by nothing"
    assert {"ucloud_api_requests_total", "ucloud_scheduler_placements_total", "ucloud_agent_vms",
            "ucloud_vm_cpu_seconds_total", "ucloud_filescan_files_registered"} <= {
        n for e in expressions for n in re.findall(r"\bucloud_[a-z0-9_]+", e)}

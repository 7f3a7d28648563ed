#!/usr/bin/env python3
"""Copy the files the Helm chart ships from their one source of truth into charts/conveyor/files/.

    crds/jobqueues.conveyor.dev.yaml   -> charts/conveyor/files/crds/jobqueues.conveyor.dev.yaml
    crds/clusterkopfpeerings.kopf.dev.yaml -> charts/conveyor/files/crds/clusterkopfpeerings.kopf.dev.yaml
    dashboards/conveyor-grafana.json   -> charts/conveyor/files/dashboards/conveyor-grafana.json

The copies are byte-for-byte; the chart's templates read them with .Files.Get.

    python scripts/sync-chart-files.py           # copy (only what differs)
    python scripts/sync-chart-files.py --check   # exit 1, naming the stale copies, if any differ

tests/chart runs the check, so a CRD or dashboard change without a sync fails the tests.
(The JobQueue CRD is generated: python -m conveyor_operator.crd > crds/jobqueues.conveyor.dev.yaml.)
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHART_FILES = ROOT / "charts" / "conveyor" / "files"
COPIES = {
    ROOT / "crds" / "jobqueues.conveyor.dev.yaml": CHART_FILES / "crds" / "jobqueues.conveyor.dev.yaml",
    ROOT / "crds" / "clusterkopfpeerings.kopf.dev.yaml": CHART_FILES / "crds" / "clusterkopfpeerings.kopf.dev.yaml",
    ROOT / "dashboards" / "conveyor-grafana.json": CHART_FILES / "dashboards" / "conveyor-grafana.json",
}


def stale() -> list[Path]:
    """Chart copies that are missing or differ from their source."""
    return [dst for src, dst in COPIES.items() if not dst.exists() or dst.read_bytes() != src.read_bytes()]


def main(argv: list[str]) -> int:
    if argv not in ([], ["--check"]):
        print(__doc__, file=sys.stderr)
        return 2
    out_of_date = stale()
    if argv == ["--check"]:
        for dst in out_of_date:
            print(f"stale: {dst.relative_to(ROOT)} (run: python scripts/sync-chart-files.py)", file=sys.stderr)
        return 1 if out_of_date else 0
    for src, dst in COPIES.items():
        if dst in out_of_date:
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(src.read_bytes())
            print(f"copied {src.relative_to(ROOT)} -> {dst.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

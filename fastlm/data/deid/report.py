"""The report beside the output: counts per type and file, never the values."""
import json
import os
from pathlib import Path


def write_report(out_dir: Path, per_file: dict[str, dict[str, int]], types, operation: str) -> Path:
    totals: dict[str, int] = {}
    for counts in per_file.values():
        for k, v in counts.items():
            totals[k] = totals.get(k, 0) + v
    report = {"operation": operation, "types": list(types), "totals": totals, "files": per_file}
    path = Path(out_dir) / "deid_report.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path

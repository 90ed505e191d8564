"""The JSON file a benchmark writes: its name, when, its settings and results."""
from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, Optional


def write(name: str, settings: Dict[str, Any], results: Any, output: Optional[str] = None) -> str:
    """Write the report to `output`, or bench/results/<name>-<time>.json; returns the path."""
    report = {"benchmark": name, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "settings": settings,
              "results": results}
    out = output or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                 f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as fh:
        json.dump(report, fh, indent=2)
    print(f"results written to {out}")
    return out

"""What the benchmark scripts share: the machine's description and the results writer."""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__,
            "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads()}
    try:
        text = Path("/proc/cpuinfo").read_text()
        names = [line.split(":", 1)[1].strip() for line in text.splitlines()
                 if line.startswith("model name")]
        info["cpu"] = names[0] if names else platform.processor()
        mem = [line for line in Path("/proc/meminfo").read_text().splitlines()
               if line.startswith("MemTotal")]
        info["ram_gb"] = round(int(mem[0].split()[1]) / 2 ** 20, 1)
    except (OSError, IndexError):
        pass
    from neuroverse_bids.model.capability import bfloat16_support

    support = bfloat16_support("cpu")  # the app's own probe: what ``auto`` precision sees
    info.update(cpu_features=list(support.features), cpu_bf16=support.level,
                cpu_bf16_reason=support.reason)
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def write_report(out: Path, name: str, data: dict, text: str) -> None:
    """``<out>/<name>.json`` (``data``) and ``<out>/<name>.md`` (``text``), each written whole
    or not at all (through a partial file renamed into place)."""
    out.mkdir(parents=True, exist_ok=True)
    for path, content in ((out / f"{name}.json", json.dumps(data, indent=2)),
                          (out / f"{name}.md", text)):
        partial = path.with_suffix(path.suffix + ".part")
        partial.write_text(content)
        os.replace(partial, path)

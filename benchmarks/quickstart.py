"""The README's first Quickstart command from a fresh clone: wall time, where it went, peak memory.

    python -m benchmarks.quickstart [--keep DIR]

Clones this repository (its committed HEAD) into an empty folder, runs the first line of the
README's Quickstart block there, with EVA_CACHE_DIR pointing at an empty folder (so the offline
conversion of the default model is part of it), and splits the wall time with the run's own files:
install (until `eva run` writes run.yaml), model conversion and iteration 0 (until the `init`
event), Ray and actor start-up (until `actors_up`), then each iteration (events.jsonl). pip's wheel
cache is whatever this machine has. Peak memory is the summed RSS of the whole process tree (an
upper bound: Ray workers share library pages). Writes benchmarks/out/quickstart.json.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks._proc import REPO, measure
from eva.checkpoint import RunDir

OUT = Path(__file__).parent / "out" / "quickstart.json"


def quickstart_line(readme: Path, index: int = 0) -> str:
    """Line `index` of the fenced code block under `## Quickstart`."""
    section = readme.read_text().split("## Quickstart", 1)[1]
    block = re.search(r"```\w*\n(.*?)```", section, re.S)
    if block is None:
        raise ValueError(f"{readme}: no code block under ## Quickstart")
    return block.group(1).strip().splitlines()[index]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--keep", type=Path, help="Clone into this (new) folder and keep it; default: a temp folder, removed."
    )
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="eva-quickstart-"))
    clone, cache = folder / "eva", folder / "cache"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    cache.mkdir()
    line = quickstart_line(clone / "README.md")
    print(f"in {clone}: {line}", flush=True)
    t0 = time.time()
    result = measure(["bash", "-c", line], env={"EVA_CACHE_DIR": str(cache)}, log=folder / "quickstart.log", cwd=clone)
    run = RunDir(next((clone / "runs").iterdir()))
    events = run.events()
    at = {e["kind"]: e["ts"] for e in events if e["kind"] in ("init", "actors_up")}
    parts = [
        ("install (scripts/install.sh)", run.config_path.stat().st_mtime - t0),
        ("model conversion + iteration 0", at["init"] - run.config_path.stat().st_mtime),
        ("Ray + actors start-up", at["actors_up"] - at["init"]),
    ]
    parts += [(f"iteration {e['iteration']}", e["seconds"]) for e in events if e["kind"] == "iteration_end"]
    print(f"\nThe first Quickstart line from a fresh clone (`{line}`), empty model cache\n")
    print("| part | seconds |\n|---|---:|")
    for name, seconds in parts:
        print(f"| {name} | {seconds:.1f} |")
    print(
        f"| **total** | **{result['wall_s']:.0f}** |\n\npeak summed RSS of the process tree: "
        f"{result['peak_rss_gb']:.1f} GB"
    )
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps({"command": line, **result, "parts": dict(parts)}, indent=2))
    if args.keep is None:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()

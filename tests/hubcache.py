"""Hugging Face caches filled by hand, exactly where a first online load leaves a dataset or a model,
so that tests load them by Hub name with HF_HUB_OFFLINE=1 and never reach the network."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def cache_hub_dataset(cache: Path, repo_id: str, subsets: dict[str, dict[str, list[dict]]]) -> None:
    """Write `repo_id` into the datasets cache `cache` as `load_dataset(repo_id, subset)` online would:
    <namespace>___<name>/<subset>/<version>/<hash>/ with dataset_info.json and <name>-<split>.arrow."""
    from datasets.packaged_modules.parquet.parquet import Parquet

    namespace, name = repo_id.split("/")
    src = cache / "_src"
    for subset, splits in subsets.items():
        files = {}
        for split, records in splits.items():
            path = src / f"{subset}-{split}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist(records), path)
            files[split] = [str(path)]
        builder = Parquet(cache_dir=str(cache), dataset_name=name, config_name=subset, data_files=files, hash="0" * 40)
        builder.download_and_prepare()
        built = Path(builder.cache_dir).parents[1]  # <name>/<subset>-<data files hash>
        target = cache / f"{namespace}___{name}" / subset
        target.parent.mkdir(parents=True, exist_ok=True)
        built.rename(target)  # a Hub dataset's config id is its subset name alone
    shutil.rmtree(src)
    shutil.rmtree(cache / name)


def cache_hub_model(hub_cache: Path, repo_id: str, folder: Path) -> Path:
    """Put the model `folder` into the Hub cache `hub_cache` (HF_HUB_CACHE) as `repo_id` at its main
    revision: models--<org>--<name>/refs/main and snapshots/<commit>/ (files copied). Returns the snapshot."""
    repo = hub_cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    shutil.copytree(folder, snapshot, ignore=shutil.ignore_patterns("EVA_SOURCE", ".*"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return snapshot

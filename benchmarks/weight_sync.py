"""What the object-store weight path costs per GB: a synthetic bf16 state dict pushed to N actors.

    python -m benchmarks.weight_sync [--gb 2] [--receivers 2]

This is eva's CPU weight sync (and its fallback everywhere): the trainer actor returns its state
dict, the driver passes the ObjectRef to every engine replica, and each replica's Ray worker
deserializes it before vLLM copies it into the model. Two ways Ray 2.60 can serialize the tensors:

- `pickle` (Ray's default): the tensor bytes go in-band into the pickle; every receiver unpickles a
  private copy, so N receivers hold N copies next to the one in the object store.
- `zero-copy` (`RAY_ENABLE_ZERO_COPY_TORCH_TENSORS=1` in the sender's process): the tensors go
  out-of-band as NumPy buffers; every receiver maps the object store's copy read-only, and shared
  pages count once (PSS) however many receivers read them.

And the collective path eva offers on CPU (`ray.weight_sync: gloo`, actors.weight_transfer):

- `gloo`: the sender broadcasts the tensors over a torch gloo group it forms with the receivers, packed
  in chunks of 256 MB (`actors.weight_transfer`'s own plan, packing and broadcast); each receiver
  reads every tensor of a chunk and lets the chunk go (vLLM copies it into the model's own tensors),
  so it holds one chunk at a time, not the whole dict.

Each mode runs in its own local Ray cluster: a sender actor builds `--gb` GB of bf16 tensors
(64 of them, like a model's layers), each receiver gets the ObjectRef (or the broadcast), reads every
tensor (a sum over each) and reports its RSS and PSS (object store: while it holds them; gloo: its
peak). Transport only: vLLM's load into the model comes on top, the same on every path. Prints a
table; writes benchmarks/results/weight_sync.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import psutil
import ray

HERE = Path(__file__).resolve().parent
TENSORS = 64


class Sender:
    def __init__(self, gb: float) -> None:
        import torch

        numel = int(gb * 1e9 / 2 / TENSORS)
        self.weights = {
            f"layer.{i}.weight": torch.full((numel,), float(i % 7), dtype=torch.bfloat16) for i in range(TENSORS)
        }

    def state_dict(self) -> dict:
        return self.weights

    def memory(self) -> dict:
        info = psutil.Process().memory_full_info()
        return {"rss_gb": info.rss / 1e9, "pss_gb": info.pss / 1e9}

    def meta(self) -> list:
        return [(name, list(t.shape)) for name, t in self.weights.items()]

    def broadcast(self, address: str, port: int, world: int) -> float:
        """Rank 0 of a gloo group: every tensor out in chunks, as GlooTrainerWeightTransferEngine sends."""

        from actors.weight_transfer import CHUNK_BYTES, _open_group, send_chunks

        group = _open_group(address, port, 0, world)
        t0 = time.perf_counter()
        send_chunks(group, list(self.weights.values()), CHUNK_BYTES)
        return time.perf_counter() - t0


class Receiver:
    def receive(self, weights: dict) -> dict:
        """Read every tensor (as vLLM's weight loader does) and report memory while holding them."""
        t0 = time.perf_counter()
        total = sum(float(t.sum()) for t in weights.values())  # every byte read, no float copy
        info = psutil.Process().memory_full_info()
        return {"read_s": time.perf_counter() - t0, "rss_gb": info.rss / 1e9, "pss_gb": info.pss / 1e9, "sum": total}

    def gloo_receive(self, address: str, port: int, rank: int, world: int, meta: list) -> dict:
        """A rank of the gloo group: each chunk received, its tensors read, the chunk let go (peak memory)."""
        import threading

        import torch

        from actors.weight_transfer import CHUNK_BYTES, _open_group, receive_chunks

        peak = {"rss": 0, "pss": 0}
        done = threading.Event()

        def watch() -> None:  # PSS sampled while chunks come and go
            while not done.wait(0.05):
                info = psutil.Process().memory_full_info()
                peak["rss"], peak["pss"] = max(peak["rss"], info.rss), max(peak["pss"], info.pss)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        group = _open_group(address, port, rank, world)
        t0 = time.perf_counter()
        shapes = [shape for _, shape in meta]
        total = 0.0
        for chunk in receive_chunks(group, shapes, [torch.bfloat16] * len(shapes), CHUNK_BYTES):
            total += sum(float(t.sum()) for _, t in chunk)
        done.set()
        watcher.join()
        seconds = time.perf_counter() - t0
        return {"read_s": seconds, "rss_gb": peak["rss"] / 1e9, "pss_gb": peak["pss"] / 1e9, "sum": total}


def one_mode(mode: str, gb: float, receivers: int) -> dict:
    zero_copy = "1" if mode == "zero-copy" else "0"
    ray.init(address="local", num_cpus=receivers + 1, include_dashboard=False, log_to_driver=False)
    try:
        sender = (
            ray.remote(num_cpus=0.5)(Sender)
            .options(runtime_env={"env_vars": {"RAY_ENABLE_ZERO_COPY_TORCH_TENSORS": zero_copy}})
            .remote(gb)
        )
        sent = ray.get(sender.memory.remote())
        pool = [ray.remote(num_cpus=0.5)(Receiver).remote() for _ in range(receivers)]
        ray.get([r.__ray_ready__.remote() for r in pool])
        if mode == "gloo":
            from actors.weight_transfer import free_port, node_address

            meta = ray.get(sender.meta.remote())
            # vLLM imported before the clock starts, as in an engine (and a trainer after its first push)
            ray.get([a.__ray_call__.remote(lambda self: __import__("actors.weight_transfer")) for a in [sender, *pool]])
            address, port, world = node_address(), free_port(), receivers + 1
            t0 = time.perf_counter()
            refs = [r.gloo_receive.remote(address, port, i + 1, world, meta) for i, r in enumerate(pool)]
            ray.get(sender.broadcast.remote(address, port, world))
            got = ray.get(refs)
            put_s, total_s = 0.0, time.perf_counter() - t0
        else:
            t0 = time.perf_counter()
            ref = sender.state_dict.remote()
            ray.wait([ref], fetch_local=False)
            put_s = time.perf_counter() - t0
            got = ray.get([r.receive.remote(ref) for r in pool])
            total_s = time.perf_counter() - t0
        return {
            "mode": mode,
            "gb": gb,
            "receivers": receivers,
            "put_s": round(put_s, 2),
            "total_s": round(total_s, 2),
            "s_per_gb": round(total_s / gb, 2),
            "receiver_rss_gb": round(max(g["rss_gb"] for g in got), 2),
            "receiver_pss_gb": round(max(g["pss_gb"] for g in got), 2),
            "sender_pss_gb": round(sent["pss_gb"], 2),
            "same_sum": len({round(g["sum"], 3) for g in got}) == 1,
            "receive_s": round(max(g["read_s"] for g in got), 2),
        }
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gb", type=float, default=2.0)
    parser.add_argument("--receivers", type=int, default=2)
    parser.add_argument("--modes", nargs="+", default=["pickle", "zero-copy", "gloo"])
    args = parser.parse_args()
    os.environ.pop("RAY_ADDRESS", None)
    rows = [one_mode(mode, args.gb, args.receivers) for mode in args.modes]
    print(f"\n{args.gb:g} GB bf16 state dict ({TENSORS} tensors) to {args.receivers} receivers, one local Ray node")
    print(f"{'mode':<10} {'total s':>8} {'s/GB':>6} {'receiver RSS GB':>16} {'receiver PSS GB':>16} {'same data':>10}")
    for r in rows:
        print(
            f"{r['mode']:<10} {r['total_s']:>8.2f} {r['s_per_gb']:>6.2f} {r['receiver_rss_gb']:>16.2f} "
            f"{r['receiver_pss_gb']:>16.2f} {str(r['same_sum']):>10}"
        )
    out = HERE / "results" / "weight_sync.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""Trainer -> engine weights over a collective: vLLM's weight-transfer engines, driven for eva's actors.

`ray.weight_sync` picks the path a policy push takes (`resolve`):

- object_store  the trainer's state dict put once in Ray's object store (zero-copy), every engine
                replica reloads it (`GenerationEngine.update_weights`). Works everywhere; the CPU
                default (benchmarks/RESULTS.md, "Weight sync": the paths measured against each other).
- nccl          vLLM's NCCL engine (`vllm/distributed/weight_transfer/nccl_engine.py`): the trainer is
                rank 0 of one group with every engine rank; one broadcast reaches every replica, GPU to
                GPU. The GPU default when the trainer has a GPU of its own.
- ipc           vLLM's CUDA IPC engine: each engine maps the trainer's GPU tensors (same node, no
                copy through the host). The default with ray.colocate (trainer and engine share a GPU).
- gloo          the same control plane over a torch gloo group on CPU: eva's backend (below),
                registered in vLLM's factories under "eva_gloo". For CPU clusters, and the path on
                which the sequencing every collective backend shares is tested on this machine.

Every collective push is vLLM's round trip: `start_weight_update` (layerwise reload begins),
`update_weights` on every engine concurrently with the trainer's send, `finish_weight_update` (the
reload's post-processing); then eva's own tail, as after any reload: the tied output head refreshed and
the prefix cache dropped (`GenerationEngine._after_reload`), and the pushed weights' label. vLLM's
trainer engines drive it through a client with four methods; `EngineClient` is that client for eva's
engine actors. The one thing it adds: vLLM's handshake gives every worker the same rank offset (its
replicas are data-parallel ranks of one engine), while eva's replicas are separate engines, so the
client gives replica i the offset 1 + i * tensor_parallel_size.

A group is static: an engine that Ray restarted has left it. The trainer notices (every engine answers
with the group it joined) and forms a new one with every replica before the next push.
"""

from __future__ import annotations

import math
import os
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Self, cast

import torch
from vllm.distributed.weight_transfer.base import (
    ParamMeta,
    TrainerInitInfo,
    TrainerWeightTransferEngine,
    WeightSource,
    WeightTransferEngine,
    WeightTransferInitInfo,
    WeightTransferUpdateInfo,
)
from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory, WeightTransferTrainerFactory

GLOO = "eva_gloo"  # the name eva's CPU backend registers under in vLLM's factories
CHUNK_BYTES = 256 << 20  # a gloo push's unit: parameters packed into buffers of at most this (or one larger tensor)


def register() -> None:
    """Register eva's gloo backend in vLLM's worker and trainer factories (idempotent): called in every
    process that builds an engine or sends weights, before either happens."""
    if GLOO not in WeightTransferEngineFactory._registry:
        WeightTransferEngineFactory.register_engine(GLOO, GlooWeightTransferEngine)
    if GLOO not in WeightTransferTrainerFactory._registry:
        WeightTransferTrainerFactory.register_engine(GLOO, GlooTrainerWeightTransferEngine)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def node_address() -> str:
    """This node's address as Ray knows it (the rendezvous address every engine dials)."""
    import ray

    return str(ray.util.get_node_ip_address())


# --- the client: vLLM's four control calls, fanned out to eva's engine actors ------------------


class EngineClient:
    """vLLM's `VLLMWeightSyncClient` (a structural protocol) for eva's `GenerationEngine` actors.

    `rank_offset` is per replica (replica i's ranks start at offset + i * ranks_per_engine), `group`
    names the group they join (an engine restarted since answers with another), and `version` is the
    label the engines serve once `finish_weight_update` returns."""

    def __init__(self, handles: list, ranks_per_engine: int, group: str, timeout_s: float) -> None:
        self.handles, self.ranks_per_engine, self.group, self.timeout_s = handles, ranks_per_engine, group, timeout_s
        self.version: str | None = None

    def _all(self, calls: list) -> list:
        import ray

        return ray.get(calls, timeout=self.timeout_s)

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        offset = init_info.get("rank_offset")
        self._all(
            [
                h.transfer_init.remote(
                    self.group,
                    init_info if offset is None else {**init_info, "rank_offset": offset + i * self.ranks_per_engine},
                )
                for i, h in enumerate(self.handles)
            ]
        )

    def start_weight_update(self) -> None:
        self._all([h.transfer_start.remote(self.group) for h in self.handles])

    def update_weights(self, update_info: dict[str, Any] | list[dict[str, Any]]) -> None:
        self._all([h.transfer_receive.remote(self.group, update_info) for h in self.handles])

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self._all([h.transfer_finish.remote(self.group, weight_version or self.version) for h in self.handles])

    def joined(self) -> bool:
        """Whether every engine is still in this client's group (a restarted one is not)."""
        return all(g == self.group for g in self._all([h.transfer_group.remote() for h in self.handles]))

    def shutdown_weight_transfer_engine(self) -> None:
        self._all([h.transfer_leave.remote() for h in self.handles])


# --- the trainer's side: one sender for the run's policy engines -------------------------------


class StateDictSource(WeightSource):
    """vLLM's `WeightSource` over a function returning the policy's weights (checkpoint names, wire
    dtype, on the trainer's device): what `PolicyTrainer` sends. Read again at every push."""

    def __init__(self, weights) -> None:
        self._weights = weights
        self._current: dict[str, torch.Tensor] | None = None

    def _read(self) -> dict[str, torch.Tensor]:
        if self._current is None:
            self._current = self._weights()
        return self._current

    def metadata(self):
        return [ParamMeta(name, t.dtype, tuple(t.shape)) for name, t in self._read().items()]

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        yield from self._read().items()

    def done(self) -> None:
        """Drop the weights read for this push (a copy when the wire dtype differs)."""
        self._current = None


class WeightSender:
    """The trainer's end of a collective weight path, formed on the first push and again whenever an
    engine has left the group (Ray restarted it). `send(version)`: one push, every replica."""

    def __init__(
        self, backend: str, engines: list, ranks_per_engine: int, timeout_s: float, weights, key: Any = None
    ) -> None:
        self.key = key  # what it was made for (the trainer makes a new one when that changes)
        self.backend, self.engines, self.ranks_per_engine = backend, engines, ranks_per_engine
        self.timeout_s = timeout_s
        self.source = StateDictSource(weights)
        self.client: EngineClient | None = None
        self.engine: Any = None
        self.formed = 0  # groups formed so far (1 after the first push; more after engine restarts)

    def _form(self) -> None:
        import uuid

        register()
        self.close()
        self.client = EngineClient(self.engines, self.ranks_per_engine, uuid.uuid4().hex[:12], self.timeout_s)
        world = 1 + len(self.engines) * self.ranks_per_engine
        if self.backend == "ipc":
            from vllm.distributed.weight_transfer.ipc_engine import IPCTrainerInitInfo

            info: Any = IPCTrainerInitInfo(rank=0)
        elif self.backend == "nccl":
            from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

            info = NCCLTrainerInitInfo(node_address(), free_port(), world, rank=0)
        else:
            chunk = int(os.environ.get("EVA_GLOO_CHUNK_BYTES", CHUNK_BYTES))  # tests: several chunks on a tiny model
            info = GlooTrainerInitInfo(node_address(), free_port(), world, chunk, rank=0)
        self.engine = WeightTransferTrainerFactory.trainer_init(info, client=self.client, source=self.source)
        self.formed += 1

    def send(self, version: str) -> None:
        if self.client is None or not self.client.joined():
            self._form()
        assert self.client is not None
        self.client.version = version
        try:
            self.engine.send_weights()
        finally:
            self.source.done()

    def close(self) -> None:
        if self.engine is not None:
            try:
                self.engine.shutdown()
            finally:
                self.engine = None


# --- eva's gloo backend: vLLM's weight-transfer interface over a torch gloo group on CPU ----------


def _plan(sizes: list[int], chunk_bytes: int) -> list[list[int]]:
    """Consecutive parameters (indices) packed into chunks of at most `chunk_bytes` (a larger one
    alone). Both ends compute it from the same metadata."""
    chunks: list[list[int]] = []
    used = 0
    for i, size in enumerate(sizes):
        if not chunks or used + size > chunk_bytes:
            chunks.append([])
            used = 0
        chunks[-1].append(i)
        used += size
    return chunks


def _nbytes(shape, dtype: torch.dtype) -> int:
    return math.prod(int(d) for d in shape) * dtype.itemsize


def send_chunks(group, tensors: list[torch.Tensor], chunk_bytes: int) -> None:
    """Rank 0: every tensor, in order, broadcast packed in `_plan`'s chunks."""
    for chunk in _plan([t.numel() * t.element_size() for t in tensors], chunk_bytes):
        parts = [tensors[i].detach().cpu().contiguous().view(-1).view(torch.uint8) for i in chunk]  # host: a chunk
        _broadcast(group, torch.cat(parts) if len(parts) > 1 else parts[0])


def receive_chunks(
    group, shapes: list[list[int]], dtypes: list[torch.dtype], chunk_bytes: int
) -> Iterator[list[tuple[int, torch.Tensor]]]:
    """A receiving rank: per chunk, (index, tensor) of each parameter in it, views of the chunk's buffer
    (valid until the next chunk is asked for)."""
    sizes = [_nbytes(s, d) for s, d in zip(shapes, dtypes, strict=True)]
    for chunk in _plan(sizes, chunk_bytes):
        buffer = torch.empty(sum(sizes[i] for i in chunk), dtype=torch.uint8)
        _broadcast(group, buffer)
        views, at = [], 0
        for i in chunk:
            views.append((i, buffer[at : at + sizes[i]].view(dtypes[i]).view(shapes[i])))
            at += sizes[i]
        yield views


def _broadcast(group, buffer: torch.Tensor) -> None:
    opts = torch.distributed.BroadcastOptions()
    opts.rootRank = 0
    group.broadcast([buffer], opts).wait()


def _open_group(address: str, port: int, rank: int, world: int):
    from vllm.distributed.utils import stateless_init_torch_distributed_process_group

    return stateless_init_torch_distributed_process_group(address, port, rank, world, backend="gloo")


@dataclass
class GlooInitInfo(WeightTransferInitInfo):
    """Worker side: where the group meets, this engine's first rank, its size, the chunk size."""

    master_address: str
    master_port: int
    rank_offset: int
    world_size: int
    chunk_bytes: int = CHUNK_BYTES


@dataclass
class GlooUpdateInfo(WeightTransferUpdateInfo):
    names: list[str]
    dtype_names: list[str]
    shapes: list[list[int]]


@dataclass
class GlooTrainerInitInfo(TrainerInitInfo):
    backend: ClassVar[str] = GLOO
    master_address: str
    master_port: int
    world_size: int
    chunk_bytes: int = CHUNK_BYTES


class GlooWeightTransferEngine(WeightTransferEngine[GlooInitInfo, GlooUpdateInfo]):
    """Worker side: receive packed chunks from rank 0, load them through vLLM's layerwise reload."""

    init_info_cls = GlooInitInfo
    update_info_cls = GlooUpdateInfo

    def __init__(self, config, vllm_config, device, model) -> None:
        super().__init__(config, vllm_config, device, model)
        self.group: Any = None
        self.chunk_bytes = CHUNK_BYTES

    def init_transfer_engine(self, init_info: GlooInitInfo) -> None:
        self.chunk_bytes = init_info.chunk_bytes
        rank = init_info.rank_offset + self.parallel_config.rank
        self.group = _open_group(init_info.master_address, init_info.master_port, rank, init_info.world_size)

    def start_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        initialize_layerwise_reload(self.model)

    def finish_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        finalize_layerwise_reload(self.model, self.model_config)

    def update_weights(self, update_info: dict[str, Any]) -> None:
        self.receive_weights(self.parse_update_info(update_info))  # CPU: nothing to synchronize

    def receive_weights(self, update_info: GlooUpdateInfo) -> None:
        if self.group is None:
            raise RuntimeError("gloo weight transfer not initialized: init_weight_transfer_engine first")
        dtypes = [getattr(torch, d) for d in update_info.dtype_names]
        for chunk in receive_chunks(self.group, update_info.shapes, dtypes, self.chunk_bytes):
            weights = [(update_info.names[i], tensor) for i, tensor in chunk]
            cast(Any, self.model).load_weights(weights)

    def shutdown(self) -> None:
        self.group = None


class GlooTrainerWeightTransferEngine(TrainerWeightTransferEngine[GlooTrainerInitInfo]):
    """Trainer side (rank 0): the round trip of vLLM's NCCL trainer engine, the bytes through gloo."""

    init_info_cls = GlooTrainerInitInfo

    def __init__(self, *, client, source, chunk_bytes: int = CHUNK_BYTES) -> None:
        super().__init__(client=client, source=source, is_sender=True)
        self.chunk_bytes = chunk_bytes
        self.group: Any = None

    @classmethod
    def trainer_init(cls, init_info: GlooTrainerInitInfo, *, client, source=None) -> Self:
        if source is None:
            raise ValueError("gloo weight transfer needs a WeightSource")
        engine = cls(client=client, source=source, chunk_bytes=init_info.chunk_bytes)
        worker = GlooInitInfo(
            init_info.master_address, init_info.master_port, 1, init_info.world_size, init_info.chunk_bytes
        )
        # the engines block in their rendezvous until the trainer joins: theirs on a side thread
        with ThreadPoolExecutor(max_workers=1) as exe:
            future = exe.submit(client.init_weight_transfer_engine, asdict(worker))
            engine.group = _open_group(init_info.master_address, init_info.master_port, 0, init_info.world_size)
            future.result()
        return engine

    def send_weights(self) -> None:
        assert self.source is not None  # trainer_init refuses none
        meta = self.source.metadata()
        update = GlooUpdateInfo(
            [m.name for m in meta], [str(m.dtype).split(".")[-1] for m in meta], [list(m.shape) for m in meta]
        )
        tensors = dict(iter(self.source))
        self.client.start_weight_update()
        failed: list[BaseException] = []

        def receive() -> None:
            try:
                self.client.update_weights(asdict(update))
            except BaseException as e:  # surfaced after the broadcast (which it would otherwise hang)
                failed.append(e)

        receiver = threading.Thread(target=receive, daemon=True)
        receiver.start()
        send_chunks(self.group, [tensors[name] for name in update.names], self.chunk_bytes)
        receiver.join()
        if failed:
            raise failed[0]
        self.client.finish_weight_update()

    def shutdown(self) -> None:
        self.group = None

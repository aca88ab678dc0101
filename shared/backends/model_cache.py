"""Pipelines kept in host memory while another model runs on the device.

The controller moves a worker between tiers and cascades, so a worker switches
models. Loading from disk takes tens of seconds; copying weights from pinned host
memory takes well under a second (the HADIS paper keeps every model in pinned host
memory for this reason). Each cached pipeline keeps one host copy of every weight
for as long as it is cached: making it resident copies the host copy to the device,
and releasing it points the modules back at the host copy and drops the device one,
which costs no copy because inference never changes a weight.

Host memory is pinned only when CUDA is available (pinning needs the driver; on a
CPU the host copy is the model itself and switching is free). The cache is used
from the worker's one GPU thread; a lock makes other uses safe too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from diffusers import DiffusionPipeline

from shared.logging import get_logger

log = get_logger(__name__)

DEFAULT_MAX_HOST_GIB = 48.0
GIB = 1024**3

SwapSource = Literal["load", "host", "device"]


@dataclass(frozen=True)
class Swap:
    """How a pipeline became resident: loaded (from disk or a builder), copied from the
    host cache, or already on the device; and how long that took."""

    source: SwapSource
    seconds: float


@dataclass
class _Entry:
    pipeline: DiffusionPipeline
    host: dict[str, dict[str, torch.Tensor]]  # component -> parameter/buffer name -> host tensor
    host_bytes: int
    resident: bool = False
    last_used: float = field(default_factory=time.monotonic)


def pipeline_modules(pipeline: DiffusionPipeline) -> dict[str, torch.nn.Module]:
    return {name: part for name, part in pipeline.components.items() if isinstance(part, torch.nn.Module)}


def _module_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    # Tied weights appear once: attaching the shared parameter once re-ties every use of it.
    named: dict[str, torch.Tensor] = dict(module.named_parameters())
    named.update(module.named_buffers())
    return named


def _host_tensor(tensor: torch.Tensor, pin: bool) -> torch.Tensor:
    if not pin:
        return tensor.detach().to("cpu")
    if tensor.device.type == "cpu":
        return tensor.detach().pin_memory()
    host = torch.empty(tensor.shape, dtype=tensor.dtype, device="cpu", pin_memory=True)
    return host.copy_(tensor.detach())


def _attach(module: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Point every parameter and buffer of `module` at the given tensors (no copy)."""
    for name, tensor in tensors.items():
        owner_name, _, attribute = name.rpartition(".")
        owner = module.get_submodule(owner_name)
        if attribute in owner._parameters:
            parameter = owner._parameters[attribute]
            assert parameter is not None  # the name came from named_parameters(), which skips None
            if torch._has_compatible_shallow_copy_type(parameter, tensor):
                parameter.data = tensor  # the same Parameter object, so every tied use follows
            else:  # meta tensors: Module.to replaces such parameters too, rather than re-pointing them
                owner._parameters[attribute] = torch.nn.Parameter(tensor, requires_grad=parameter.requires_grad)
        else:
            setattr(owner, attribute, tensor)


def _unique_bytes(host: dict[str, dict[str, torch.Tensor]]) -> int:
    seen: dict[int, int] = {}
    for tensors in host.values():
        for tensor in tensors.values():
            seen[tensor.data_ptr()] = tensor.numel() * tensor.element_size()
    return sum(seen.values())


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class ModelCache:
    """Pipelines by key; at most `max_host_bytes` of host copies (least recently used
    non-resident pipelines are dropped beyond that)."""

    def __init__(self, device: str | torch.device, max_host_bytes: int | None = None) -> None:
        self.device = torch.device(device)
        self.max_host_bytes = max_host_bytes
        self.pin = self.device.type == "cuda" and torch.cuda.is_available()
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.RLock()
        self.last_release_s: float | None = None

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def keys(self) -> list[str]:
        return list(self._entries)

    def is_resident(self, key: str) -> bool:
        entry = self._entries.get(key)
        return entry is not None and entry.resident

    @property
    def host_bytes(self) -> int:
        return sum(entry.host_bytes for entry in self._entries.values())

    def acquire(self, key: str, load: Callable[[], DiffusionPipeline]) -> tuple[DiffusionPipeline, Swap]:
        """The pipeline under `key`, on the device: loaded with `load` the first time
        (any device, final dtype), copied from the host copy afterwards."""
        with self._lock:
            started = time.perf_counter()
            entry = self._entries.get(key)
            if entry is None:
                entry = self._add(key, load())
                source: SwapSource = "load"
            elif entry.resident:
                source = "device"
            else:
                source = "host"
            if not entry.resident:
                self._to_device(entry)
            entry.last_used = time.monotonic()
            swap = Swap(source, time.perf_counter() - started)
        log.info("model_resident", key=key, source=swap.source, seconds=round(swap.seconds, 4),
                 host_gib=round(entry.host_bytes / GIB, 3), device=str(self.device))
        return entry.pipeline, swap

    def release(self, key: str) -> float:
        """Move the pipeline back to its host copy and free its device memory; seconds taken."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or not entry.resident:
                return 0.0
            started = time.perf_counter()
            for name, module in pipeline_modules(entry.pipeline).items():
                _attach(module, entry.host[name])
            entry.resident = False
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            self.last_release_s = time.perf_counter() - started
            self._evict_over_budget(keep=None)
        log.info("model_released", key=key, seconds=round(self.last_release_s, 4))
        return self.last_release_s

    def drop(self, key: str) -> None:
        """Forget a pipeline entirely (its host copy too)."""
        with self._lock:
            self.release(key)
            self._entries.pop(key, None)

    def _add(self, key: str, pipeline: DiffusionPipeline) -> _Entry:
        host = {}
        for name, module in pipeline_modules(pipeline).items():
            host[name] = {tensor_name: _host_tensor(tensor, self.pin) for tensor_name, tensor in
                          _module_tensors(module).items()}
            # Attached at once, module by module: the loading copy is freed as the pinned one
            # is made, so a large model never sits in host memory twice.
            _attach(module, host[name])
        entry = _Entry(pipeline, host, _unique_bytes(host))
        self._entries[key] = entry
        self._evict_over_budget(keep=key)
        return entry

    def _to_device(self, entry: _Entry) -> None:
        for module in pipeline_modules(entry.pipeline).values():
            module.to(self.device, non_blocking=self.pin)
        _synchronize(self.device)
        entry.resident = True

    def _evict_over_budget(self, keep: str | None) -> None:
        if self.max_host_bytes is None:
            return
        idle = sorted((e.last_used, key) for key, e in self._entries.items() if not e.resident and key != keep)
        for _, key in idle:
            if self.host_bytes <= self.max_host_bytes:
                return
            log.info("model_evicted", key=key, host_gib=round(self._entries[key].host_bytes / GIB, 3))
            del self._entries[key]


_default_caches: dict[str, ModelCache] = {}


def default_cache(device: str | torch.device) -> ModelCache:
    """The process-wide cache for `device`: every generator of a worker shares it, so
    a worker switched back to a model it served before finds it in host memory."""
    key = str(torch.device(device))
    if key not in _default_caches:
        _default_caches[key] = ModelCache(device, max_host_bytes=int(DEFAULT_MAX_HOST_GIB * GIB))
    return _default_caches[key]

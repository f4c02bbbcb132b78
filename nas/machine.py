"""Machine identity: whose measurements a latency table holds.

A latency measured on one processor is not true on another: two 2-vCPU KVM guests that
both call themselves "Intel(R) Xeon(R) Processor @ 2.50GHz" ran the same UIB networks
1.7x apart, and the ratio was not constant across networks. So every LUT records the
:class:`Fingerprint` of the machine and software that measured it, and a LUT is "this
machine's" only when every field matches the fingerprint taken here. A field a file did
not record (tables measured before fingerprints existed) never matches.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
from dataclasses import asdict, dataclass, fields
from typing import Mapping

import torch


def device_name(device: str = "cpu") -> str:
    """A human-readable name of the processor that runs ``device``."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def _cpuinfo() -> dict:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    info = {}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if not line.strip():
                    break  # the first processor's block ends here
                key, sep, value = line.partition(":")
                if sep:
                    info[key.strip()] = value.strip()
    except OSError:
        pass
    return info


def _cpu_id() -> str | None:
    """Vendor, family, model and stepping (``GenuineIntel 6/85/7``): tells processor
    generations apart where the model name does not (virtual machines often report a
    generic one)."""
    info = _cpuinfo()
    if "cpu family" in info:
        return f"{info.get('vendor_id', '?')} {info['cpu family']}/{info.get('model', '?')}/{info.get('stepping', '?')}"
    return platform.machine() or None


def _isa(device: str) -> str | None:
    """The instruction set level torch dispatches to (CPU), or the compute capability (CUDA)."""
    if device.startswith("cuda"):
        major, minor = torch.cuda.get_device_capability(torch.device(device))
        return f"sm_{major}{minor}"
    try:
        return torch.backends.cpu.get_cpu_capability()
    except AttributeError:  # torch without the query
        return None


@dataclass(frozen=True)
class Fingerprint:
    """What decides the latency of a layer on a machine, besides the layer itself."""

    device: str  # cpu or cuda
    processor: str | None
    cpu_id: str | None
    isa: str | None
    logical_cores: int | None
    threads: int | None
    torch: str | None
    backend: str | None

    @property
    def id(self) -> str:
        """A short stable id: the same fields give the same id on any machine."""
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:10]

    def complete(self) -> bool:
        return all(getattr(self, f.name) is not None for f in fields(self))

    def matches(self, other: "Fingerprint") -> bool:
        """Same machine and software: every field recorded and equal."""
        return self.complete() and other.complete() and self == other

    def differences(self, other: "Fingerprint") -> list[str]:
        """``field: ours vs theirs`` for each field that differs or was not recorded."""
        out = []
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if mine is None or theirs is None or mine != theirs:
                out.append(f"{f.name}: {mine if mine is not None else 'not recorded'} vs "
                           f"{theirs if theirs is not None else 'not recorded'}")
        return out

    def describe(self) -> str:
        """One line for people: ``Intel(R) Xeon(R) ... (GenuineIntel 6/85/7, AVX512, 2 cores),
        1 thread, torch 2.13.0+cpu [id 1a2b3c4d5e]``."""
        hw = ", ".join(str(x) for x in (self.cpu_id, self.isa,
                                        f"{self.logical_cores} cores" if self.logical_cores else None) if x)
        threads = f"{self.threads} thread{'s' if self.threads != 1 else ''}" if self.threads else "threads ?"
        backend = "" if self.backend in (None, "torch") else f", {self.backend}"
        # a device timed by the bundle runner has no torch: its backend says what ran
        runtime = backend.lstrip(", ") if self.torch is None and backend else f"torch {self.torch or '?'}{backend}"
        return (f"{self.processor or 'unknown processor'}{f' ({hw})' if hw else ''}, {threads}, {runtime} "
                f"[id {self.id}]")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "Fingerprint":
        """Fields a file lacks are None (not recorded), so it never matches a complete one."""
        return cls(**{f.name: d.get(f.name) for f in fields(cls)})


@functools.lru_cache(maxsize=None)
def this_machine(device: str = "cpu", threads: int = 1, backend: str = "torch") -> Fingerprint:
    """The fingerprint of this machine measuring with these harness settings (read once per
    process: every LUT lookup and every label that says whose a table is asks for it)."""
    kind = "cuda" if device.startswith("cuda") else "cpu"
    # on a GPU, the CUDA version stands where a CPU's generation does
    cpu_id = _cpu_id() if kind == "cpu" else f"cuda {torch.version.cuda}"
    return Fingerprint(device=kind, processor=device_name(device), cpu_id=cpu_id,
                       isa=_isa(device), logical_cores=os.cpu_count(), threads=int(threads),
                       torch=torch.__version__, backend=backend)

"""One retrain over several processes (`torchrun --nproc_per_node G -m stages retrain …`).

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK in every process it starts; `Ranks` is this
process's place, and the helpers below are what the retrain stage needs from the group:
one device per rank, one message per launch, collective flags and objects, and per-rank
random streams that resume. With one process (rank 0 of 1) nothing starts a process
group and every helper is the identity, so a plain `darts retrain` runs the same code.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
from torch import distributed as dist

from darts.data import DataError
from darts.loops.train import RetrainConfig

from .params import ParamsError

@dataclass(frozen=True)
class Ranks:
    """This process's place in a `torchrun` launch; rank 0 of 1 without one.

    torchrun sets WORLD_SIZE, RANK and LOCAL_RANK in every process it starts. With one
    process no process group is started and every helper below is the identity, so a
    single-process retrain runs the same computation it ran before DDP existed."""

    rank: int = 0
    world: int = 1
    local: int = 0
    group: Any = None  # the gloo group for host-side flags and objects, once started

    @classmethod
    def from_env(cls) -> "Ranks":
        got = {}
        for key, default in (("WORLD_SIZE", "1"), ("RANK", "0"), ("LOCAL_RANK", "0")):
            raw = os.environ.get(key, default)
            try:
                got[key] = int(raw)
            except ValueError:
                raise ParamsError(f"{key}={raw!r} is invalid; must be an integer (torchrun sets it)") from None
        ranks = cls(got["RANK"], got["WORLD_SIZE"], got["LOCAL_RANK"])
        if ranks.world < 1 or not 0 <= ranks.rank < ranks.world or ranks.local < 0:
            raise ParamsError(f"WORLD_SIZE={ranks.world} RANK={ranks.rank} LOCAL_RANK={ranks.local} is invalid; "
                              "need WORLD_SIZE >= 1, 0 <= RANK < WORLD_SIZE, LOCAL_RANK >= 0 (launch with torchrun)")
        return ranks

    @property
    def lead(self) -> bool:
        """Rank 0: the only one that writes outputs and checkpoints and speaks."""
        return self.rank == 0


@contextlib.contextmanager
def said_once(ranks: Ranks) -> Iterator[None]:
    """Bad input that every rank finds alike (params, genotype, data) is reported by rank 0
    alone; the other ranks exit with the same code silently instead of repeating its line."""
    try:
        yield
    except (ParamsError, DataError):
        if ranks.lead:
            raise
        raise SystemExit(2) from None


def rank_device(device: torch.device, ranks: Ranks) -> torch.device:
    """This rank's device: cuda:LOCAL_RANK when the run is on CUDA, else the CPU (gloo)."""
    if ranks.world == 1 or device.type != "cuda":
        return device
    if device.index is not None:
        raise ParamsError(f"device={device} names one GPU, but each of the {ranks.world} torchrun processes uses "
                          f"cuda:LOCAL_RANK; valid: auto, cuda, cpu")
    return torch.device("cuda", ranks.local)


def check_shards(cfg: RetrainConfig, ranks: Ranks, device: torch.device) -> None:
    """One-line errors for settings a DDP run cannot honour (nothing to check for one process)."""
    if ranks.world == 1:
        return
    if cfg.batch_size % ranks.world:
        raise ParamsError(f"retrain.batch_size={cfg.batch_size} does not split over {ranks.world} processes "
                          f"(each takes an equal part of the global batch); valid: a multiple of {ranks.world}, "
                          f"or a process count that divides {cfg.batch_size}")
    if cfg.sync_bn and device.type != "cuda":
        raise ParamsError(f"retrain.sync_bn=true needs CUDA (torch's SyncBatchNorm has no CPU kernel) but this run "
                          f"is on {device.type}; valid here: false")


def start_group(ranks: Ranks, device: torch.device) -> Ranks:
    """Join the torchrun process group: NCCL for CUDA, gloo on the CPU; plus a gloo group for
    the per-step stop flag and pickled objects, which must not wait on a GPU stream."""
    if device.type == "cuda":
        if device.index >= torch.cuda.device_count():
            raise ParamsError(f"LOCAL_RANK={ranks.local} has no GPU: this machine has {torch.cuda.device_count()}; "
                              f"valid: --nproc_per_node <= {torch.cuda.device_count()}")
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    host = dist.new_group(backend="gloo") if device.type == "cuda" else dist.group.WORLD
    return Ranks(ranks.rank, ranks.world, ranks.local, host)


def any_rank(ranks: Ranks, flag: bool) -> bool:
    """Whether ``flag`` is set on any rank; every rank must ask at the same point. A signal may
    reach one rank a step before another, and a rank that stopped alone would leave the
    others waiting in the gradient all-reduce."""
    if ranks.world == 1:
        return flag
    t = torch.tensor([int(flag)])
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=ranks.group)
    return bool(t.item())


def from_lead(ranks: Ranks, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (also a barrier: the others wait until rank 0 sends)."""
    if ranks.world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=ranks.group)
    return box[0]


def to_lead(ranks: Ranks, obj: Any) -> list | None:
    """Every rank's ``obj``, in rank order, on rank 0 (None elsewhere)."""
    if ranks.world == 1:
        return [obj]
    every = [None] * ranks.world if ranks.lead else None
    dist.gather_object(obj, every, dst=0, group=ranks.group)
    return every


def rank_seed(seed: int, rank: int, *salt: int) -> int:
    """Torch seed of rank ``rank`` > 0 once the model is built: its drop-path masks must not
    repeat rank 0's (the same seed everywhere would drop the same cells for row i of every
    shard). ``salt``: a resume point, so a reseeded resume does not replay the first masks."""
    return int(np.random.SeedSequence([seed, rank, 0xDD9, *salt]).generate_state(1, np.uint64)[0] >> 1)


def rank_rng(device: torch.device) -> dict:
    """This process's torch RNG states (CPU, and its own GPU's: never touch another's)."""
    return {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def restore_rng(state: dict, ranks: Ranks, device: torch.device, seed: int, salt: tuple[int, int]) -> bool:
    """Put back this rank's RNG from a checkpoint; False if it was written by another number of
    processes (then rank 0 takes the saved rank-0 state and the others a fresh ``rank_seed``)."""
    saved = state.get("rank_rng")
    if ranks.world == 1 and saved is None:  # the single-process checkpoint, restored as always
        torch.set_rng_state(state["rng"])
        if state.get("cuda_rng") is not None and device.type == "cuda":
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        return True
    if saved is not None and len(saved) == ranks.world:
        mine = saved[ranks.rank]
        torch.set_rng_state(mine["cpu"])
        if mine["cuda"] is not None and device.type == "cuda":
            torch.cuda.set_rng_state(mine["cuda"], device)
        return True
    if ranks.lead:
        torch.set_rng_state(state["rng"])
    else:
        torch.manual_seed(rank_seed(seed, ranks.rank, *salt))
    return False

"""What a search records: activated α at every α update, per-step schedule values,
pruning events and per-epoch summaries. The paper's Figures 1 and 5 are drawn from it.

Tensors end up on the host as compact float32 stacks, but an α step only queues what it
records (a detached float32 copy of act(α), the losses) on the network's device: on a GPU
every device→host copy waits for all queued work, so `flush()` moves the queue in one
copy per epoch (and before anything reads the records) instead of several per α step.
Newly pruned ops come as masks on the device (CRB decides pruning there) and are queued
the same way, to become `pruned` entries at the flush; an activation that never prunes
passes None.
"""
from __future__ import annotations

import torch


class History:
    def __init__(self, ops: list[str]):
        self.ops = ops
        self.alpha_steps: list[int] = []          # iteration index of each α record
        self.alpha_epochs: list[int] = []
        self._alpha: dict[str, list[torch.Tensor]] = {"normal": [], "reduce": []}  # host records
        self.penalty: list[float] = []
        self.val_loss: list[float] = []
        self._pruned: list[dict] = []             # {"step", "cell", "edge", "op"}
        self.steps: dict[str, list] = {"alpha": []}  # per iteration: α-step flag (+ F, F̄, T for FIMT)
        self.epochs: list[dict] = []
        self._pending: list[tuple[torch.Tensor | None, torch.Tensor]] = []  # (penalty, val loss)
        self._pending_alpha: list[dict[str, torch.Tensor]] = []  # act(α) records not yet on the host
        self._pending_pruned: list[tuple[int, str, torch.Tensor]] = []  # (step, cell, newly pruned mask)
        self._epoch_start = 0  # index into val_loss/penalty of the current epoch's first α step

    def record_alpha(self, step: int, epoch: int, weights: dict[str, torch.Tensor],
                     newly: dict[str, torch.Tensor | None] | None = None,
                     penalty: torch.Tensor | None = None, val_loss: torch.Tensor | None = None,
                     info: dict | None = None) -> None:
        """Queue one α record (act(α) per cell type, losses) without reading the device.

        `newly` is what `SearchNetwork.prune` returned: None, {} or None masks when the
        activation never prunes.
        """
        self.alpha_steps.append(step)
        self.alpha_epochs.append(epoch)
        # a copy: the caller's tensor may change in place before the flush
        self._pending_alpha.append({t: w.detach().to(torch.float32, copy=True) for t, w in weights.items()})
        if val_loss is not None:
            self._pending.append((penalty, val_loss))
        for t, mask in (newly or {}).items():  # None / {} / None masks: nothing pruned
            if mask is not None:
                self._pending_pruned.append((step, t, mask))

    def record_step(self, step: int, took_alpha: bool, logged: dict) -> None:
        self.steps["alpha"].append(bool(took_alpha))
        for key, v in logged.items():
            self.steps.setdefault(key, []).append(float(v))

    @property
    def pruned(self) -> list[dict]:
        """Pruning events, {"step", "cell", "edge", "op"}, in order (pending records are flushed first)."""
        self.flush()
        return self._pruned

    @property
    def alpha(self) -> dict[str, list[torch.Tensor]]:
        """Activated α records per cell type, as host tensors (pending records are flushed first)."""
        self.flush()
        return self._alpha

    def flush(self) -> None:
        """Move the pending on-device records (act(α), α-step losses, pruning masks) to the host
        in one copy (one sync)."""
        if not self._pending and not self._pending_alpha and not self._pending_pruned:
            return
        parts: list[torch.Tensor] = []
        cells = list(self._pending_alpha[0]) if self._pending_alpha else []
        for t in cells:
            parts.append(torch.stack([rec[t] for rec in self._pending_alpha]))
        with_penalty = bool(self._pending) and all(p is not None for p, _ in self._pending)
        if self._pending:
            parts.append(torch.stack([v.float() for _, v in self._pending]))
        if with_penalty:
            parts.append(torch.stack([p.float() for p, _ in self._pending]))
        if self._pending_pruned:
            parts.append(torch.stack([m.float() for _, _, m in self._pending_pruned]))
        dev = parts[0].device
        flat = torch.cat([x.reshape(-1).to(dev) for x in parts]).cpu()
        host = [chunk.view(x.shape) for chunk, x in zip(flat.split([x.numel() for x in parts]), parts)]
        for t, stack in zip(cells, host):
            self._alpha.setdefault(t, []).extend(stack.unbind(0))
        if self._pending:
            self.val_loss += host[len(cells)].tolist()
        if with_penalty:
            self.penalty += host[len(cells) + 1].tolist()
        if self._pending_pruned:
            for (step, t, _), mask in zip(self._pending_pruned, host[-1].unbind(0)):
                self._pruned += [{"step": step, "cell": t, "edge": e, "op": self.ops[k]}
                                 for e, k in mask.nonzero().tolist()]
        self._pending, self._pending_alpha, self._pending_pruned = [], [], []

    def epoch_alpha_stats(self) -> dict:
        """Mean validation loss and penalty of this epoch's α steps; starts the next epoch."""
        self.flush()
        vl, pl = self.val_loss[self._epoch_start:], self.penalty[self._epoch_start:]
        self._epoch_start = len(self.val_loss)
        return {"val_loss": sum(vl) / len(vl) if vl else None, "penalty": sum(pl) / len(pl) if pl else None}

    def record_epoch(self, row: dict) -> None:
        self.epochs.append(row)

    def alpha_tensor(self, cell: str) -> torch.Tensor:
        """(records, edges, ops) stack of activated α for one cell type."""
        return torch.stack(self.alpha[cell]) if self.alpha[cell] else torch.empty(0)

    def state_dict(self) -> dict:
        self.flush()
        return {
            "ops": self.ops,
            "alpha_steps": self.alpha_steps,
            "alpha_epochs": self.alpha_epochs,
            "alpha": {t: self.alpha_tensor(t) for t in self.alpha},
            "penalty": self.penalty,
            "val_loss": self.val_loss,
            "pruned": self.pruned,
            "steps": self.steps,
            "epochs": self.epochs,
            "epoch_start": self._epoch_start,
        }

    def load_state_dict(self, d: dict) -> None:
        self.ops = list(d["ops"])
        self.alpha_steps, self.alpha_epochs = list(d["alpha_steps"]), list(d["alpha_epochs"])
        self._alpha = {t: list(v.unbind(0)) if v.numel() else [] for t, v in d["alpha"].items()}
        self.penalty, self.val_loss = list(d["penalty"]), list(d["val_loss"])
        self._pruned, self.steps, self.epochs = list(d["pruned"]), dict(d["steps"]), list(d["epochs"])
        self._pending, self._pending_alpha, self._pending_pruned = [], [], []
        self._epoch_start = int(d.get("epoch_start", len(self.val_loss)))

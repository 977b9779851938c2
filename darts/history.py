"""What a search records: activated α at every α update, per-step schedule values,
pruning events and per-epoch summaries. The paper's Figures 1 and 5 are drawn from it.

Tensors stay on the host as compact float32 stacks; nothing here syncs per w step
except the scalars the schedule already produced.
"""
from __future__ import annotations

import torch


class History:
    def __init__(self, ops: list[str]):
        self.ops = ops
        self.alpha_steps: list[int] = []          # iteration index of each α record
        self.alpha_epochs: list[int] = []
        self.alpha: dict[str, list[torch.Tensor]] = {"normal": [], "reduce": []}
        self.penalty: list[float] = []
        self.val_loss: list[float] = []
        self.pruned: list[dict] = []              # {"step", "cell", "edge", "op"}
        self.steps: dict[str, list] = {"alpha": []}  # per iteration: α-step flag (+ F, F̄, T for FIMT)
        self.epochs: list[dict] = []
        self._pending: list[tuple[torch.Tensor | None, torch.Tensor]] = []
        self._epoch_start = 0  # index into val_loss/penalty of the current epoch's first α step

    def record_alpha(self, step: int, epoch: int, weights: dict[str, torch.Tensor], newly=None,
                     penalty: torch.Tensor | None = None, val_loss: torch.Tensor | None = None,
                     info: dict | None = None) -> None:
        self.alpha_steps.append(step)
        self.alpha_epochs.append(epoch)
        for t, w in weights.items():
            self.alpha[t].append(w.detach().to("cpu", torch.float32))
        if val_loss is not None:
            self._pending.append((penalty, val_loss))
        if newly is not None:
            for t, mask in newly.items():
                for e, k in mask.nonzero().tolist():
                    self.pruned.append({"step": step, "cell": t, "edge": e, "op": self.ops[k]})

    def record_step(self, step: int, took_alpha: bool, logged: dict) -> None:
        self.steps["alpha"].append(bool(took_alpha))
        for key, v in logged.items():
            self.steps.setdefault(key, []).append(float(v))

    def flush(self) -> None:
        """Move the pending on-device α-step losses to host lists (one sync)."""
        if not self._pending:
            return
        self.val_loss += torch.stack([v.float().cpu() for _, v in self._pending]).tolist()
        if all(p is not None for p, _ in self._pending):
            self.penalty += torch.stack([p.float().cpu() for p, _ in self._pending]).tolist()
        self._pending = []

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
        self.alpha = {t: list(v.unbind(0)) if v.numel() else [] for t, v in d["alpha"].items()}
        self.penalty, self.val_loss = list(d["penalty"]), list(d["val_loss"])
        self.pruned, self.steps, self.epochs = list(d["pruned"]), dict(d["steps"]), list(d["epochs"])
        self._pending = []
        self._epoch_start = int(d.get("epoch_start", len(self.val_loss)))

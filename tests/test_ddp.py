"""The `trainer=ddp` preset: a 2-process CPU (gloo) fit of a tiny model."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent('''
    import json, os, sys
    import torch
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset
    from mmldm.configuration import compose
    from mmldm.training.trainer import make_trainer

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(4, 1)
        def training_step(self, batch, _):
            x, y = batch
            return torch.nn.functional.mse_loss(self.net(x), y)
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    out = sys.argv[1]
    cfg = compose(["trainer=ddp", "trainer.accelerator=cpu", "trainer.max_steps=6", "trainer.enable_progress_bar=false"])
    L.seed_everything(0)
    x = torch.randn(64, 4); y = x.sum(1, keepdim=True)
    trainer = make_trainer(cfg.trainer, out, limit_val_batches=0)
    model = Tiny()
    trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=8))
    result = {"rank": trainer.global_rank, "world": trainer.world_size, "step": trainer.global_step,
              "backend": torch.distributed.get_backend() if torch.distributed.is_initialized() else None,
              "weight": model.net.weight.detach().flatten().tolist()}
    with open(os.path.join(out, f"rank{trainer.global_rank}.json"), "w") as f:
        json.dump(result, f)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
''')


@pytest.mark.slow  # test_robustness trains both phases under trainer=ddp through the command line
def test_ddp_preset_trains_with_two_cpu_processes(tmp_path):
    script = tmp_path / "fit.py"
    script.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert all(r["backend"] == "gloo" and r["step"] == 6 for r in ranks)
    # DDP keeps replicas identical: both ranks end with the same weights
    assert ranks[0]["weight"] == ranks[1]["weight"]

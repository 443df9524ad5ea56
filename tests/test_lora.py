"""Small-GPU options: the trainer presets compose, 8-bit Adam fails clearly without CUDA, and a LoRA run
saves a merged pipeline/ that plain diffusers loads."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir

from spurgen.config import CONF_DIR

from .conftest import FAST, run_cli
from .helpers import TINY


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=overrides)


@pytest.mark.parametrize("preset, lora", [("gpu_24gb", 0), ("gpu_16gb", 16)])
def test_gpu_presets_compose(preset, lora):
    cfg = _compose(["experiment=sd15_sfsl", f"trainer={preset}", "loss=low_memory"])
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.accelerator == "gpu"
    assert cfg.trainer.max_steps == 1000  # the experiment's own trainer settings survive
    assert cfg.train.gradient_checkpointing and cfg.train.optimizer == "adamw8bit"
    assert cfg.train.lora_rank == lora
    assert cfg.loss.sfsl.decoder_checkpointing and not cfg.loss.sfsl.decode_at_extractor_size
    assert cfg.loss.sfsl.t_max == 500 and cfg.loss.sfsl.decode_size is None


def test_loss_fast_is_the_exact_computation():
    """loss=fast is loss=default spelled out (BENCHMARKS.md: nothing cheaper kept the gradient)."""
    fast, default = _compose(["loss=fast"]).loss, _compose([]).loss
    assert fast == default
    approx = _compose(["loss=approx"]).loss.sfsl
    assert approx.decode_at_extractor_size and not fast.sfsl.decode_at_extractor_size


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_adamw8bit_without_cuda_is_a_clear_error(tmp_path, capsys):
    code = run_cli([*TINY, *FAST, "train.optimizer=adamw8bit", f"hydra.run.dir={tmp_path}/run"])
    err = capsys.readouterr().err
    assert code == 2 and "CUDA" in err and "train.optimizer=adamw" in err and "Traceback" not in err


def test_lora_merge_keeps_the_function(tiny_parts):
    from spurgen.models.lora import TEXT_TARGETS, UNET_TARGETS, apply_lora, lora_parameters, merge_lora

    unet, te = tiny_parts.unet, tiny_parts.text_encoder
    apply_lora(unet, UNET_TARGETS, 4)
    apply_lora(te, TEXT_TARGETS, 4)
    trainable = [n for n, p in unet.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable) and lora_parameters(unet) > 0
    for n, p in unet.named_parameters():  # a non-zero adapter, so merging has something to merge
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.02)
    z, t = torch.randn(1, 4, 16, 16), torch.tensor([10])
    ids = torch.randint(0, 100, (1, 8))
    with torch.no_grad():
        before = unet(z, t, te(ids)[0]).sample
        assert merge_lora(unet) > 0 and merge_lora(te) > 0
        after = unet(z, t, te(ids)[0]).sample
    assert not any("lora_" in k for k in unet.state_dict()) and lora_parameters(te) == 0
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_lora_run_saves_a_merged_standard_pipeline(tmp_path):
    run = tmp_path / "run"
    code = run_cli(
        [
            *TINY,
            *FAST,
            "train.lora_rank=4",
            "train.lr_unet=1e-3",
            "lambda_sfsl=0.1",
            "loss=low_memory",
            "loss.sfsl.t_max=1000",
            f"hydra.run.dir={run}",
        ]
    )
    assert code == 0
    script = (
        "import sys, torch\n"
        "from diffusers import StableDiffusionPipeline\n"
        f"p = StableDiffusionPipeline.from_pretrained(r'{run / 'pipeline'}')\n"
        "assert not any('lora' in k for k in p.unet.state_dict()), 'LoRA not merged'\n"
        "assert not any('lora' in k for k in p.text_encoder.state_dict())\n"
        "assert 'spurgen' not in sys.modules\n"
        "print(float(p.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q.weight.sum()))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    from spurgen.models.tiny import build_tiny_sd

    fresh = build_tiny_sd().unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q.weight
    assert abs(float(out.stdout.strip().splitlines()[-1]) - float(fresh.sum())) > 0, (
        "the LoRA update is merged"
    )

"""experiments/peer_ratio.py's parts that need no diffusers script: the saved tiny pipeline folder loads with the
classes train_dreambooth.py uses, and both command lines carry the same settings."""

from __future__ import annotations

import json

import pytest

from experiments.peer_ratio import Settings, dreambooth_command, save_tiny_pipeline, spurgen_command


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    return save_tiny_pipeline(tmp_path_factory.mktemp("peer") / "tiny_pipeline")


def test_saved_tiny_pipeline_loads_as_the_script_loads_it(pipeline_dir):
    """train_dreambooth.py: AutoTokenizer(use_fast=False), the text encoder class its config names, DDPMScheduler,
    AutoencoderKL and UNet2DConditionModel, each from its subfolder."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel

    from spurgen.models.tiny import build_tiny_tokenizer

    assert {p.name for p in pipeline_dir.iterdir()} >= {
        "unet",
        "vae",
        "text_encoder",
        "tokenizer",
        "scheduler",
    }
    tok = AutoTokenizer.from_pretrained(pipeline_dir, subfolder="tokenizer", use_fast=False)
    ours = build_tiny_tokenizer(32, ("a", "photo", "of", "sks", "flower", "the", "on", "in"))
    prompt = Settings().instance_prompt
    assert tok(prompt).input_ids == ours(prompt).input_ids  # the same ids, not the transformers 5 trap
    assert tok(prompt).input_ids != tok(Settings().class_prompt).input_ids
    config = json.loads((pipeline_dir / "text_encoder" / "config.json").read_text())
    assert config["architectures"] == ["CLIPTextModel"]  # import_model_class_from_model_name_or_path
    text = CLIPTextModel.from_pretrained(pipeline_dir, subfolder="text_encoder")
    assert tok.model_max_length == text.config.max_position_embeddings
    DDPMScheduler.from_pretrained(pipeline_dir, subfolder="scheduler")
    vae = AutoencoderKL.from_pretrained(pipeline_dir, subfolder="vae")
    unet = UNet2DConditionModel.from_pretrained(pipeline_dir, subfolder="unet")
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    assert unet.config.sample_size * factor == Settings().resolution
    assert unet.config.cross_attention_dim == text.config.hidden_size


def _script_args(cmd: list[str]) -> dict[str, str | bool]:
    out: dict[str, str | bool] = {}
    for arg in cmd[2:]:
        key, eq, value = arg.removeprefix("--").partition("=")
        out[key] = value if eq else True
    return out


def test_both_command_lines_carry_the_same_settings(tmp_path):
    """The spurgen overrides compose to the settings the script's arguments name."""
    from hydra import compose, initialize_config_dir

    from spurgen.config import CONF_DIR

    s, p = Settings(), tmp_path
    steps = 7
    db = _script_args(
        dreambooth_command(p / "train_dreambooth.py", p / "m", p / "r", p / "c", p / "o", steps, s)
    )
    sp = spurgen_command(p / "m", p / "r", p / "c", p / "o", steps, s)
    assert sp[1:3] == ["-m", "spurgen.run"]
    overrides = [o for o in sp[3:] if not o.startswith("hydra.")]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=overrides)

    assert db["with_prior_preservation"] is True and db["train_text_encoder"] is True
    assert (
        db["mixed_precision"] == "no"
        and cfg.trainer.precision == "32-true"
        and cfg.trainer.accelerator == "cpu"
    )
    assert cfg.train.train_text_encoder is True and float(cfg.lambda_sfsl) == 0.0
    assert db["pretrained_model_name_or_path"] == cfg.model.path == str(p / "m")
    assert db["instance_data_dir"] == cfg.data.reference_dir == str(p / "r")
    assert db["class_data_dir"] == cfg.data.class_images_dir == str(p / "c")
    assert int(db["max_train_steps"]) == cfg.trainer.max_steps == steps
    assert int(db["resolution"]) == cfg.data.resolution == s.resolution
    assert int(db["train_batch_size"]) == cfg.data.batch_size == s.batch_size
    assert int(db["num_class_images"]) == cfg.data.num_class_images == s.num_class_images
    assert cfg.data.num_references == s.num_references
    assert float(db["learning_rate"]) == cfg.train.lr_unet == cfg.train.lr_text_encoder == s.learning_rate
    assert db["lr_scheduler"] == "constant" and int(db["lr_warmup_steps"]) == 0
    assert float(db["adam_beta1"]) == cfg.train.adam_beta1 and float(db["adam_beta2"]) == cfg.train.adam_beta2
    assert float(db["adam_weight_decay"]) == cfg.train.weight_decay == s.weight_decay
    assert float(db["adam_epsilon"]) == cfg.train.adam_eps
    assert float(db["max_grad_norm"]) == cfg.trainer.gradient_clip_val
    assert cfg.trainer.accumulate_grad_batches == 1  # the script's default gradient_accumulation_steps
    assert float(db["prior_loss_weight"]) == cfg.loss.lambda_prior
    assert db["instance_prompt"] == cfg.data.instance_prompt and db["class_prompt"] == cfg.data.class_prompt
    assert db["center_crop"] is True and cfg.data.center_crop is True
    assert int(db["seed"]) == cfg.seed == s.seed
    assert int(db["checkpointing_steps"]) > 2 * steps and cfg.train.checkpoint_every_n_steps == 0
    assert cfg.train.sample_every_n_steps == 0 and list(cfg.stages) == ["train"]


def test_step_stamps_times_each_optimiser_step(tmp_path):
    """experiments/step_stamps.py runs a program as __main__ and stamps every optimiser step it takes; the
    per-step cost is the median gap after the warm-up intervals."""
    import subprocess
    import sys

    from experiments.peer_ratio import child_env, per_step, stamped

    from .conftest import REPO

    program = tmp_path / "train.py"
    program.write_text(
        "import sys, torch\n"
        "assert __name__ == '__main__' and sys.argv[1:] == ['--steps', '4']\n"
        "w = torch.nn.Parameter(torch.zeros(3))\n"
        "opt = torch.optim.AdamW([w], lr=0.1)\n"
        "for _ in range(4):\n"
        "    w.sum().backward(); opt.step(); opt.zero_grad()\n"
    )
    out = tmp_path / "stamps.json"
    cmd = stamped([sys.executable, str(program), "--steps", "4"], out)
    done = subprocess.run(cmd, env=child_env(1), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    stamps = json.loads(out.read_text())
    assert len(stamps["wall"]) == len(stamps["cpu"]) == 4
    assert stamps["wall"] == sorted(stamps["wall"])
    assert per_step({"wall": [0.0, 1.0, 3.0, 4.0, 6.0]}, warmup=1) == {"wall": 2.0}
    with pytest.raises(SystemExit):
        per_step({"wall": [0.0, 1.0]}, warmup=1)

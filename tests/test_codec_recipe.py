"""The codec training recipe: the typed solver section, the learning-rate schedule, dead-code restarts that
stop before the end, and the quantizer-loss form (issue 23: a demo codec that keeps every colour); since
issue 33 the recipe runs on the engine (``vqdiff.engine.codec_*``)."""

import math

import pytest
import torch

from vqdiff.modeling.codecs.image.quantizers import VectorQuantizer
from vqdiff.engine.codec_solver_config import CodecLRSchedule, CodecSolverConfig, codec_learning_rate
from vqdiff.engine.codec_training import train_vqvae
from vqdiff.modeling.codecs.image.vqgan import VQModel
from vqdiff.utils.config import ConfigError

TINY_DD = dict(double_z=False, z_channels=8, resolution=16, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 1],
               num_res_blocks=1, attn_resolutions=[], dropout=0.0)


def test_solver_section_defaults_and_checks_name_the_key():
    cfg = CodecSolverConfig.from_mapping({"base_lr": 3e-3, "max_steps": 10})
    assert (cfg.base_lr, cfg.max_steps, cfg.lr_schedule, cfg.batch_size) == (3e-3, 10, "cosine", 16)
    # the project's one section parser: the same wording as the diffusion solver's, LoRA's and the objective's
    with pytest.raises(ConfigError, match=r"unknown key 'solver\.base_lrr'; did you mean 'solver\.base_lr'\? "
                                          r"\(known keys: base_lr, max_steps"):
        CodecSolverConfig.from_mapping({"base_lrr": 1e-3})
    with pytest.raises(ConfigError, match=r"'solver\.lr_schedule' must be 'cosine' .*, got 'step'"):
        CodecSolverConfig.from_mapping({"lr_schedule": "step"})
    with pytest.raises(ConfigError, match=r"'solver\.dead_code_restart_until' must be in \[0, 1\], got 1\.5"):
        CodecSolverConfig.from_mapping({"dead_code_restart_until": 1.5})
    with pytest.raises(ConfigError, match=r"'solver\.max_steps' must be an int"):
        CodecSolverConfig.from_mapping({"max_steps": "many"})
    with pytest.raises(ConfigError, match=r"'solver\.betas' must be two numbers in \[0, 1\), got \[0\.5, 1\.5\]"):
        CodecSolverConfig.from_mapping({"betas": [0.5, 1.5]})
    assert CodecSolverConfig.from_mapping({"base_lr": "1e-4"}).base_lr == 1e-4  # YAML's number string, once


def test_learning_rate_warms_up_then_decays_to_the_floor():
    curve = dict(base_lr=1e-3, max_steps=101, warmup_steps=10, min_lr_ratio=0.1)
    lrs = [codec_learning_rate(s, **curve) for s in range(101)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert lrs[10] == pytest.approx(1e-3) and lrs[100] == pytest.approx(1e-4)
    # the cosine's midpoint lies halfway between the peak and the floor
    assert lrs[55] == pytest.approx(1e-4 + 0.5 * 9e-4 * (1 + math.cos(math.pi * 0.5)))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert {codec_learning_rate(s, 1e-3, 50, lr_schedule="constant") for s in range(50)} == {1e-3}
    # the engine's schedule object sets each step's rate before the step; a later first step (the
    # discriminator's disc_start) joins the same curve there, and a resumed schedule continues it
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = CodecLRSchedule(opt, first_step=20, **curve)
    assert opt.param_groups[0]["lr"] == pytest.approx(lrs[20])
    sched.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(lrs[22])
    again = CodecLRSchedule(opt, first_step=20, **curve)
    again.load_state_dict(sched.state_dict())
    assert opt.param_groups[0]["lr"] == pytest.approx(lrs[22])


def test_quantizer_loss_forms():
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    for legacy, enc_weight, code_weight in ((True, 1.0, 0.25), (False, 0.25, 1.0)):
        vq = VectorQuantizer(8, 4, beta=0.25, legacy=legacy)
        _, loss, _ = vq(z)
        (g_z,) = torch.autograd.grad(loss, z, retain_graph=True)
        g_code = torch.autograd.grad(loss, vq.embedding.weight)[0]
        zq = vq.embedding.weight[vq.get_indices(z).flatten()].view(2, 3, 3, 4).permute(0, 3, 1, 2)
        # d/dz of w * mean((z - sg[e])^2) is 2w (z - e) / numel: the commitment pulls with the encoder's weight
        assert torch.allclose(g_z, enc_weight * 2 * (z - zq).detach() / z.numel(), atol=1e-6)
        # ... and the codebook term moves each code towards its encoder outputs with the code's weight
        idx = vq.get_indices(z).flatten()
        z_rows = z.detach().permute(0, 2, 3, 1).reshape(-1, 4)
        expected = torch.zeros(8, 4).index_add_(0, idx, code_weight * 2 * (vq.embedding.weight[idx].detach() - z_rows)
                                                / z.numel())
        assert torch.allclose(g_code, expected, atol=1e-6)
    model = VQModel(TINY_DD, n_embed=8, embed_dim=4, legacy_quantizer_loss=False)
    assert model.quantize.legacy is False
    assert VQModel(TINY_DD, n_embed=8, embed_dim=4).quantize.legacy is True  # taming's default kept


def test_dead_code_restarts_stop_before_the_end(monkeypatch, tmp_path):
    from vqdiff.engine import codec_solver

    steps_restarted = []
    real = codec_solver.restart_dead_codes

    def spy(quantizer, counts, last_z, distributed=False):
        steps_restarted.append(int(counts.sum()))  # codes chosen since the last restart: 2 steps x 2 x 8 x 8
        return real(quantizer, counts, last_z, distributed)

    monkeypatch.setattr(codec_solver, "restart_dead_codes", spy)
    config = {
        "model": {"target": "vqdiff.modeling.codecs.image.vqgan.VQModel",
                  "params": {"ddconfig": TINY_DD, "n_embed": 8, "embed_dim": 4}},
        "solver": {"max_steps": 20, "batch_size": 2, "dead_code_restart": 2, "dead_code_restart_until": 0.5},
        "dataloader": {"train_datasets": [{"target": "vqdiff.data.synthetic.ShapesDataset",
                                           "params": {"num_samples": 6, "resolution": 16, "split": "all"}}]},
    }
    result = train_vqvae(config, tmp_path / "run", max_steps=20, progress=False)
    assert steps_restarted == [2 * 2 * 8 * 8] * 5  # after steps 2, 4, 6, 8, 10: the first half only
    assert len(result["history"]) >= 1

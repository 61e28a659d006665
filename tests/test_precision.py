"""Issue 25: the ``precision`` and ``compile`` sampling options and the training ``amp_dtype`` rules.

``auto`` resolves by torch's own native-bf16 checks (mocked here both ways); the default fp32 path gives the
tokens of the code before the option existed, bit for bit; the network runs in the chosen precision while
the diffusion math stays fp32; ``compile`` has no graph break in the sampling loop, compiles once per shape
and samples what eager samples; bad values raise errors naming the option.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest
import torch

from inference_VQ_Diffusion import VQ_Diffusion
from vqdiff.engine.amp import resolve_amp
from vqdiff.inference.api import request_options
from vqdiff.modeling.diffusion import sampling
from vqdiff.modeling.diffusion.sampling_options import SamplingOptions
from vqdiff.sample import build_parser
from vqdiff.utils.precision import native_bf16, resolve_precision

from _fake_parts import dalle
from benchmarks import perf

MAIN_TOKENS = {  # from the code before issue 25 (main at ea32a6e), this model and these seeds
    "truncation": [
        [8, 50, 1, 18, 34, 24, 46, 44, 49, 34, 40, 44, 28, 19, 19, 19, 45, 26, 45, 52, 47, 48, 23, 52, 3,
         26, 31, 29, 11, 13, 19, 6, 8, 40, 29, 27, 63, 1, 48, 1, 34, 26, 43, 61, 8, 4, 22, 33, 40, 2, 21,
         24, 11, 24, 60, 52, 57, 38, 1, 47, 46, 46, 46, 52],
        [43, 20, 54, 30, 34, 40, 11, 8, 24, 52, 42, 40, 55, 3, 47, 26, 20, 1, 60, 55, 52, 26, 18, 55, 34,
         34, 40, 24, 58, 47, 18, 60, 7, 59, 41, 52, 32, 38, 9, 32, 47, 24, 47, 13, 39, 20, 42, 54, 45, 22,
         28, 47, 23, 44, 5, 26, 59, 36, 18, 22, 28, 24, 38, 24],
    ],
    "guidance": [
        [8, 61, 1, 18, 34, 24, 46, 44, 49, 34, 40, 26, 28, 0, 19, 19, 45, 26, 45, 52, 47, 48, 23, 52, 28,
         26, 31, 12, 11, 57, 19, 37, 8, 40, 29, 27, 7, 1, 3, 1, 34, 26, 43, 61, 8, 4, 22, 33, 40, 2, 21, 62,
         11, 24, 53, 61, 57, 38, 1, 47, 46, 46, 54, 17],
        [43, 20, 54, 30, 34, 43, 17, 8, 24, 36, 42, 40, 55, 3, 47, 26, 47, 41, 3, 0, 50, 26, 18, 55, 48, 34,
         40, 24, 58, 47, 18, 32, 7, 59, 41, 54, 31, 11, 27, 18, 47, 24, 47, 53, 39, 40, 42, 11, 45, 22, 10,
         36, 12, 44, 5, 27, 59, 36, 50, 22, 28, 24, 38, 24],
    ],
    "purity_prior": [
        [4, 25, 46, 59, 63, 31, 12, 37, 53, 52, 24, 42, 32, 32, 55, 55, 9, 30, 32, 16, 11, 22, 47, 32, 24,
         63, 38, 53, 52, 21, 47, 1, 36, 4, 4, 9, 27, 40, 12, 47, 56, 24, 7, 25, 53, 12, 40, 40, 4, 51, 28,
         26, 41, 1, 34, 56, 21, 2, 47, 46, 57, 53, 18, 53],
        [52, 32, 44, 58, 32, 7, 51, 53, 49, 50, 29, 4, 61, 49, 53, 41, 60, 40, 24, 19, 14, 3, 58, 19, 55,
         42, 4, 36, 23, 63, 57, 49, 39, 23, 5, 18, 32, 40, 44, 47, 11, 9, 11, 1, 3, 61, 61, 62, 9, 59, 40,
         0, 45, 8, 46, 52, 36, 0, 42, 46, 18, 48, 30, 29],
    ],
}


def seeded_network():
    """The quick benchmark network (2 layers, width 64, 8x8 tokens, K = 64, T = 10) with weights drawn per
    parameter name (independent of construction order), and a 2-image text condition."""
    size = perf.reference_size(quick=True)
    d = perf.build_text2image_diffusion(size).eval()
    with torch.no_grad():
        for name, p in sorted(d.named_parameters()):
            g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.dim() > 1 else 0.1))
    g = torch.Generator().manual_seed(3)
    cond = torch.randn(2, size["cond_len"], size["cond_dim"], generator=g)
    uncond = torch.randn(2, size["cond_len"], size["cond_dim"], generator=g)
    return d, cond, uncond


REQUESTS = {"truncation": dict(truncation_rate=0.85), "purity_prior": dict(prior_rule=2, prior_weight=1.0)}


def sample(d, cond, uncond, name, **options):
    kw = dict(REQUESTS.get(name, {}))
    if name == "guidance":
        kw = dict(truncation_rate=0.9, guidance_scale=2.0, uncond_emb=uncond)
    return d.sample(condition_embed=cond, filter_ratio=0, generator=torch.Generator().manual_seed(7), **kw,
                    **options)["content_token"]


@pytest.fixture
def cpu_bf16(monkeypatch):
    """Set what torch's CPUID checks of native bf16 answer: ``cpu_bf16(True)`` = a CPU with AMX."""

    def set_native(native: bool) -> None:
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: native)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)

    return set_native


# ---------------------------------------------------------------------------------------------- auto
def test_auto_is_fp32_on_a_cpu_without_native_bf16(cpu_bf16):
    cpu_bf16(False)
    native, reason = native_bf16("cpu")
    assert not native and "without AMX or AVX512-BF16" in reason
    chosen = resolve_precision("auto", "cpu")
    assert (chosen.name, chosen.dtype, chosen.reduced) == ("fp32", torch.float32, False)
    assert SamplingOptions(precision="auto").for_device("cpu").precision == "fp32"


def test_auto_is_bf16_on_a_cpu_with_amx_or_avx512_bf16(cpu_bf16, monkeypatch):
    cpu_bf16(True)
    assert resolve_precision("auto", "cpu").name == "bf16"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    chosen = resolve_precision("auto", "cpu")
    assert chosen.name == "bf16" and "_is_avx512_bf16_supported() True" in chosen.reason
    assert str(chosen).startswith("bf16 (auto: CPU with native bf16")


def test_explicit_precisions_are_kept_whatever_the_device():
    for name in ("fp32", "bf16", "fp16"):
        assert resolve_precision(name, "cpu").name == name
    assert resolve_precision("bf16", "cpu").dtype == torch.bfloat16


def test_this_cpu_is_read_from_torchs_cpuid_checks_not_from_mkldnn():
    """On this CPU (AVX-512 without AMX / AVX512-BF16) mkldnn says bf16 is 'supported' (it emulates it):
    auto must follow the CPUID flags instead, and they agree with /proc/cpuinfo."""
    flags = set()
    if Path("/proc/cpuinfo").exists():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    if not flags:
        pytest.fail("/proc/cpuinfo has no flags line: this test reads the CPU flags there")
    native = bool({"amx_tile", "avx512_bf16"} & flags)
    assert native_bf16("cpu")[0] == native
    assert resolve_precision("auto", "cpu").name == ("bf16" if native else "fp32")


def test_auto_sampling_runs_the_network_in_bf16_and_the_math_in_fp32(cpu_bf16, caplog):
    d, cond, uncond = seeded_network()
    seen = []
    hook = d.transformer.register_forward_hook(
        lambda mod, args, out: seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"),
                                            out.dtype)))
    steps = []
    try:
        for native in (True, False):
            cpu_bf16(native)
            seen.clear()
            with caplog.at_level("INFO", logger="vqdiff.sampling"):
                d.sample(condition_embed=cond, filter_ratio=0, truncation_rate=0.85, precision="auto",
                         generator=torch.Generator().manual_seed(1), callback=lambda info: steps.append(info))
            expected = (True, torch.bfloat16, torch.bfloat16) if native else (False, seen[0][1], torch.float32)
            assert seen and all(s == expected for s in seen), (native, seen[:2])
            assert f"precision auto -> {'bf16' if native else 'fp32'}" in caplog.text
            assert all(info["log_x0"].dtype == torch.float32 for info in steps)  # log p(x_0|x_t) and after: fp32
            caplog.clear()
    finally:
        hook.remove()


# ---------------------------------------------------------------------------------------------- fp32 default
@pytest.mark.parametrize("name", ["truncation", "guidance", "purity_prior"])
def test_fp32_default_is_bit_identical_to_the_code_before_the_option(name):
    d, cond, uncond = seeded_network()
    before = torch.tensor(MAIN_TOKENS[name])
    assert torch.equal(sample(d, cond, uncond, name), before)
    assert torch.equal(sample(d, cond, uncond, name, precision="fp32"), before)


def test_bf16_samples_mostly_agree_with_fp32_and_differ_somewhere():
    """bf16 really changes the network's numbers (else the option would do nothing), and most tokens stay."""
    d, cond, uncond = seeded_network()
    fp32 = sample(d, cond, uncond, "truncation")
    bf16 = sample(d, cond, uncond, "truncation", precision="bf16")
    agree = (fp32 == bf16).float().mean().item()
    assert 0.5 < agree < 1.0, agree


# ---------------------------------------------------------------------------------------------- strings
def test_the_options_string_carries_the_precision_and_round_trips():
    assert str(SamplingOptions()) == "top0.85r"  # the official string is unchanged for the default
    assert SamplingOptions().to_sample_type(with_precision=True) == "top0.85r,fp32"
    o = SamplingOptions(precision="bf16", compile=True, skip_step=1)
    assert str(o) == "top0.85r,fast1,bf16,compile"
    assert SamplingOptions.from_sample_type(str(o)) == o
    assert SamplingOptions.from_sample_type("top0.85r,auto").precision == "auto"


def test_generate_content_and_the_api_report_the_chosen_precision(cpu_bf16, caplog):
    cpu_bf16(False)
    model = dalle()
    out = model.generate_content(batch={"text": ["a cat"]}, filter_ratio=0, replicate=2,
                                 options=SamplingOptions(precision="auto", generator=torch.Generator().manual_seed(0)))
    assert out["options"] == "top0.85r,fp32"
    eng = VQ_Diffusion.__new__(VQ_Diffusion)
    eng.model, eng.device = dalle().eval(), torch.device("cpu")
    with caplog.at_level("INFO"):
        images = eng.inference_generate_sample_with_condition("a cat", truncation_rate=0.9, save_root=None,
                                                              batch_size=2, seed=0, precision="auto")
    assert [im.info["sampling_options"] for im in images] == ["top0.9r,fp32"] * 2
    assert "precision auto -> fp32" in caplog.text and "with top0.9r,fp32" in caplog.text
    cpu_bf16(True)
    images = eng.inference_generate_sample_with_condition("a cat", truncation_rate=0.9, save_root=None,
                                                          batch_size=1, seed=0, precision="auto")
    assert images[0].info["sampling_options"] == "top0.9r,bf16"


# ---------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("name,value", [("precision", "fp8"), ("precision", "BF16"), ("precision", None),
                                        ("compile", "yes"), ("compile_backend", "")])
def test_bad_values_raise_errors_naming_the_option(name, value):
    with pytest.raises(ValueError, match=f"sampling option {name} must be"):
        SamplingOptions(**{name: value})
    with pytest.raises(ValueError, match=f"^{name} must be"):
        request_options(0.85, **{name: value})


def test_the_cli_takes_precision_and_compile_and_refuses_others(capsys):
    args = build_parser().parse_args(["--config", "c.yaml", "--precision", "auto", "--compile"])
    assert (args.precision, args.compile) == ("auto", True)
    assert build_parser().parse_args(["--config", "c.yaml"]).precision == "fp32"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--config", "c.yaml", "--precision", "fp8"])
    assert "--precision: invalid choice: 'fp8'" in capsys.readouterr().err


def test_every_api_sampling_method_takes_precision():
    import inspect

    for method in ("inference_generate_sample_with_condition", "inference_generate_sample_with_class",
                   "inference_generate_sample_unconditional", "inference_inpaint"):
        param = inspect.signature(getattr(VQ_Diffusion, method)).parameters["precision"]
        assert param.default == "fp32", method


# ---------------------------------------------------------------------------------------------- training
def test_training_amp_dtype_follows_the_same_rules(cpu_bf16):
    cpu_bf16(False)
    auto = resolve_amp(True, "auto", "cpu")
    assert not auto.enabled and auto.dtype == torch.float32 and "auto -> fp32" in auto.note
    asked = resolve_amp(True, "bf16", "cpu")  # asked for: runs, and the log says it is emulated here
    assert asked.enabled and asked.dtype == torch.bfloat16 and "without AMX" in asked.note
    assert not resolve_amp(True, "fp16", "cpu").enabled  # no CPU fp16 training
    cpu_bf16(True)
    auto = resolve_amp(True, "auto", "cpu")
    assert auto.enabled and auto.dtype == torch.bfloat16 and not auto.use_scaler and auto.name == "bf16"
    assert resolve_amp(True, "bf16", "cpu").note is None
    with pytest.raises(ValueError, match="--amp must be fp16, bf16 or auto"):
        resolve_amp("fp8", "fp16", "cpu")


# ---------------------------------------------------------------------------------------------- compile
def test_compiled_sampling_has_no_graph_break_compiles_once_per_shape_and_matches_eager(caplog):
    """``fullgraph=True`` raises on any graph break; one graph per input shape over whole sampling runs (a
    guided request doubles the batch: a second shape); the tokens equal eager's and log p within rounding."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    d, cond, uncond = seeded_network()
    fast = dict(compile=True, compile_backend="aot_eager")
    with caplog.at_level("INFO", logger="vqdiff.sampling"):
        compiled = sample(d, cond, uncond, "truncation", **fast)
    assert "compiled the network (backend aot_eager)" in caplog.text
    net = d.compiled_network("aot_eager")
    assert len(net.compile_seconds) == 1 and net.last_compile_seconds > 0
    assert torch.equal(compiled, sample(d, cond, uncond, "truncation"))
    assert torch.equal(sample(d, cond, uncond, "truncation", **fast), compiled)  # reused: no new shape
    assert len(net.compile_seconds) == 1 and counters["stats"]["unique_graphs"] == 1
    assert torch.equal(sample(d, cond, uncond, "guidance", **fast), sample(d, cond, uncond, "guidance"))
    assert len(net.compile_seconds) == 2 and counters["stats"]["unique_graphs"] == 2
    x = torch.randint(0, 65, (2, 64), generator=torch.Generator().manual_seed(0))
    t = torch.tensor([3, 8])
    eager = sampling.Denoiser(d, cond, None, SamplingOptions(truncation_rate=None))(x, t)
    comp = sampling.Denoiser(d, cond, None, SamplingOptions(truncation_rate=None, **fast))(x, t)
    torch.testing.assert_close(comp, eager, rtol=0, atol=1e-4)
    assert not any(k.startswith("_compiled") for k in d.state_dict())  # the compiled network is not state
    torch._dynamo.reset()  # leave no compiled graphs to later tests

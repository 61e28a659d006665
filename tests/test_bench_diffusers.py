"""benchmarks/bench_diffusers.py: runs tiny, reports like-for-like rows, the two networks agree, and its diffusers
loop is VQDiffusionPipeline's own (same tokens for the same generator). Timings are not checked (shared CPU)."""

from __future__ import annotations

import json
import types

import pytest
import torch
from torch import nn


@pytest.fixture(scope="module")
def bench():
    from benchmarks import bench_diffusers

    return bench_diffusers


def test_quick_run_reports_fields_and_agreement(bench, tmp_path, capsys):
    out_file = tmp_path / "bench.json"
    res = bench.main(["--quick", "--json", str(out_file)])
    printed = capsys.readouterr().out
    assert "| size | what | vqdiff | diffusers | diffusers / vqdiff |" in printed
    assert "network forward, both uncached (ms)" in printed and "s/image (both uncached)" in printed
    assert json.loads(printed.split("JSON ", 1)[1]) == json.loads(out_file.read_text()) == json.loads(json.dumps(res))
    (r,) = res["results"]
    assert r["size"]["name"] == "quick" and r["denormals"] == "library"
    assert {"ours_uncached", "diffusers", "ours_cached", "ratio_uncached"} <= set(r["forward"])
    s = r["sampling"]
    assert s["steps"] == bench.SIZES["quick"]["T"] and s["batch"] == bench.SIZES["quick"]["batch"]
    for key in ("ours_s_per_image", "ours_uncached_s_per_image", "diffusers_s_per_image", "ratio", "ratio_uncached"):
        assert s[key] > 0
    # the exported weights give the same log-probabilities in both libraries (fp32 rounding only)
    assert r["agreement"]["max_abs_diff_log_probs"] < 1e-4
    assert r["agreement"]["max_abs_diff_ours_cached_vs_uncached"] < 1e-5
    # classifier-free guidance and one denormal setting for both sides also run
    guided = bench.main(["--quick", "--guidance-scale", "3", "--denormals", "flush-all"])["results"][0]
    assert guided["sampling"]["guidance_scale"] == 3.0 and guided["denormals"] == "flush-all"
    assert guided["sampling"]["ratio"] > 0
    with pytest.raises(SystemExit, match="unknown"):
        bench.main(["--sizes", "huge"])


@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
def test_diffusers_loop_is_the_pipelines_loop(bench, guidance_scale):
    from diffusers import VQDiffusionPipeline, VQModel
    from diffusers.pipelines.deprecated.vq_diffusion.pipeline_vq_diffusion import (
        LearnedClassifierFreeSamplingEmbeddings,
    )

    size = bench.SIZES["quick"]
    _, theirs, scheduler = bench.build_pair(size)
    data = bench.inputs(size)

    class Tokenizer:  # stands in for CLIPTokenizer: the ids are ignored by the text encoder below
        model_max_length = size["cond_len"]

        def __call__(self, prompt, **kwargs):
            return types.SimpleNamespace(input_ids=torch.zeros(len(prompt), size["cond_len"], dtype=torch.long))

    class TextEncoder(nn.Module):  # returns the benchmark's features (unnormalised: the pipeline normalises)
        device, dtype = torch.device("cpu"), torch.float32

        def forward(self, ids):
            return (3.0 * data["cond"],)

    vqvae = VQModel(num_vq_embeddings=size["K"], block_out_channels=(8,), norm_num_groups=8, latent_channels=3,
                    vq_embed_dim=3, layers_per_block=1)
    pipe = VQDiffusionPipeline(vqvae=vqvae, text_encoder=TextEncoder(), tokenizer=Tokenizer(), transformer=theirs,
                               scheduler=scheduler,
                               learned_classifier_free_sampling_embeddings=LearnedClassifierFreeSamplingEmbeddings(False))
    pipe.set_progress_bar_config(disable=True)
    steps: list[torch.Tensor] = []
    pipe(["x"] * size["batch"], num_inference_steps=size["T"], guidance_scale=guidance_scale, truncation_rate=0.86,
         generator=torch.Generator().manual_seed(5), callback=lambda i, t, s: steps.append(s.clone()), output_type="np")
    # the pipeline's negative prompt goes through the same stand-in encoder: uncond = cond here
    mine = bench.diffusers_sample(theirs, scheduler, data["cond"], data["cond"], 0.86, guidance_scale,
                                  torch.Generator().manual_seed(5))
    assert len(steps) == size["T"]
    assert torch.equal(steps[-1], mine)
    assert (mine < size["K"]).all()  # no [MASK] left

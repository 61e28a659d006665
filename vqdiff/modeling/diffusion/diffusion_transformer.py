"""``DiffusionTransformer``: VQ-Diffusion's discrete diffusion over image tokens (arXiv 2111.14822).

Equation numbers refer to arXiv 2111.14822 (VQ-Diffusion) unless marked "Improved" (arXiv 2205.16007);
see ``docs/diffusion.md`` for the derivations. Conventions (the official code's, kept for checkpoints and
users' notebooks): K codebook entries, ``num_classes = K + 1`` with [MASK] = K last; log-probabilities
are (B, K+1, N); step index ``t = 0 .. T-1`` (paper ``t + 1``); ``t = -1`` means "x_0 itself".

The network (``self.transformer``) maps ``(x_t (B, N) long, cond, t (B,)) -> logits (B, K, N)``; this
module turns it into ``p(x_0 | x_t)``, the posterior, the training loss and the samplers.
"""

from __future__ import annotations

import inspect
import warnings
from contextlib import nullcontext
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vqdiff.modeling.embeddings.text_feature_cache import TextFeatureCache
from vqdiff.utils.config import instantiate_from_config

from . import forward_process, losses, posterior
from .condition_input import padding_mask_from_tokens, training_condition
from .masked_elbo import MaskedELBOOptions
from .log_ops import CLAMP_MIN, log_onehot_to_index, log_sample_categorical, multinomial_kl
from .network_runner import CompiledNetwork
from .objectives import OBJECTIVES, build_objective, check_checkpoint_records
from .official_sampling import OfficialSamplingMethods
from .schedule import LogSchedule, log_schedule

__all__ = ["DiffusionTransformer", "OBJECTIVES"]



def _params(cfg: Any) -> dict:
    if isinstance(cfg, Mapping):
        return dict(cfg.get("params") or {})
    return {}


class DiffusionTransformer(OfficialSamplingMethods, nn.Module):
    """Mask-and-replace discrete diffusion with an x_0-parameterised network (Sec. 3.2-3.3).

    Args (the official names):
        content_emb_config: config of the token embedding (``num_embed`` = K); injected into the network.
        condition_emb_config: config of the condition embedding (CLIP text / class), or None.
        transformer_config: config of the network (or an ``nn.Module``); ``diffusion_step`` and
            ``content_emb_config`` are injected into its params, as the official code does.
        diffusion_step: T.
        alpha_init_type: only ``'alpha1'`` (the released linear schedule).
        auxiliary_loss_weight: lambda of the auxiliary x_0 loss (Eq. 12).
        adaptive_auxiliary_loss: weight the auxiliary loss by ``2 - t/T``.
        mask_weight: [weight of masked positions, weight of unmasked positions] in the KL.
        learnable_cf: learn the null-text embedding ``empty_text_embed`` (Improved, Sec. 3.2).
        objective: a key of ``objectives.OBJECTIVES``: ``'vq_diffusion'`` (VQ-Diffusion's bound with its
            auxiliary loss, the default) or ``'masked_elbo'`` (the masked-diffusion ELBO, :mod:`masked_elbo`;
            its checkpoints carry the buffer ``masked_elbo_schedule``, and the mask-and-replace methods
            ``q_pred``, ``q_sample``, ``q_posterior``, ``p_sample`` refuse to run). The loss, the sampler swap,
            the checkpoint record and the held-out bound are the objective's (``self.objective_impl``).
        masked_elbo: the options of ``'masked_elbo'`` (:class:`masked_elbo.MaskedELBOOptions`), or None.
        objective_options: the options of any objective (for ``'masked_elbo'`` the same as ``masked_elbo``).
        condition_feature_cache: keep the frozen condition embedding's features of up to this many captions
            (``TextFeatureCache``, keyed by token ids) for ``forward`` (training, validation loss), so the tower
            runs once per caption; 0 (default) off. Only while the embedding has no trainable parameter;
            sampling never uses it.
        condition_padding_mask: mask the text padding in the cross attention (``-inf`` logits after each
            caption's end-of-text token, :mod:`condition_input`); False (default) is the official network,
            bit for bit. It is an option of this module rather than of ``transformer_config`` because the mask
            comes from the condition's token ids, which only this module sees (the network gets embeddings),
            like the learned null text that it must treat as unpadded; the network just takes an optional
            ``cond_mask``. A model trained with it must be sampled with it (it is in the saved config).
    """

    def __init__(
        self,
        *,
        content_emb_config: Optional[Mapping] = None,
        condition_emb_config: Optional[Mapping] = None,
        transformer_config: Any = None,
        diffusion_step: int = 100,
        alpha_init_type: str = "alpha1",
        auxiliary_loss_weight: float = 0.0,
        adaptive_auxiliary_loss: bool = False,
        mask_weight: Sequence[float] = (1.0, 1.0),
        learnable_cf: bool = False,
        objective: str = "vq_diffusion",
        masked_elbo: Optional[Mapping] = None,
        objective_options: Optional[Mapping] = None,
        condition_feature_cache: int = 0,
        condition_padding_mask: bool = False,
    ):
        super().__init__()
        self.objective_impl = build_objective(
            objective, {"masked_elbo": masked_elbo, "objective_options": objective_options})
        self.objective = objective
        # kept for callers that read it: the masked-ELBO options, None for other objectives
        options = self.objective_impl.options
        self.masked_elbo_options = options if isinstance(options, MaskedELBOOptions) else None
        if transformer_config is None:
            raise ValueError("DiffusionTransformer needs 'transformer_config' (the network's target + params)")
        # -- condition embedding (frozen CLIP text / class labels) ----------------------------------
        if condition_emb_config is None:
            self.condition_emb = None
        elif isinstance(condition_emb_config, nn.Module):
            self.condition_emb = condition_emb_config
        else:
            self.condition_emb = instantiate_from_config(condition_emb_config)
        self.condition_feature_cache = TextFeatureCache(condition_feature_cache) if condition_feature_cache else None
        # -- network, with the official injected params ----------------------------------------------
        net_params = _params(transformer_config)
        if isinstance(transformer_config, nn.Module):
            self.transformer = transformer_config
        else:
            cfg = dict(transformer_config)
            cfg["params"] = {**net_params, "diffusion_step": diffusion_step, "content_emb_config": content_emb_config}
            if hasattr(transformer_config, "key_path"):
                from vqdiff.utils.config import ConfigNode

                cfg = ConfigNode(cfg, transformer_config.key_path)
            self.transformer = instantiate_from_config(cfg)
        K = _params(content_emb_config).get("num_embed")
        if K is None:
            K = getattr(self.transformer, "num_embed", None) or getattr(
                getattr(self.transformer, "content_emb", None), "num_embed", None
            )
        if K is None:
            raise ValueError("cannot tell the codebook size K: give content_emb_config.params.num_embed")
        seq_len = net_params.get("content_seq_len", getattr(self.transformer, "content_seq_len", None))
        if seq_len is None:
            raise ValueError("cannot tell the token sequence length: give transformer_config.params.content_seq_len")
        self.num_classes = int(K) + 1  # K tokens + [MASK]
        self.content_seq_len = int(seq_len)
        self.shape = self.content_seq_len
        self.num_timesteps = int(diffusion_step)
        self.loss_type = "vb_stochastic"
        self.parametrization = "x0"
        self.auxiliary_loss_weight = float(auxiliary_loss_weight)
        self.adaptive_auxiliary_loss = bool(adaptive_auxiliary_loss)
        if len(mask_weight) != 2:
            raise ValueError(f"mask_weight must be [masked, unmasked], got {mask_weight!r}")
        self.mask_weight = [float(w) for w in mask_weight]

        # -- schedule buffers: built in float64, stored fp32 (official names) ---------------------
        for name, value in log_schedule(self.num_timesteps, self.num_classes - 1, alpha_init_type).items():
            self.register_buffer(name, value.float())
        self.register_buffer("Lt_history", torch.zeros(self.num_timesteps))
        self.register_buffer("Lt_count", torch.zeros(self.num_timesteps))
        self._compiled_networks: dict[str, CompiledNetwork] = {}  # compile=True sampling, per backend (not state)
        record = self.objective_impl.record()
        if record is not None:  # the checkpoint records the objective (masked_elbo: its schedule)
            self.register_buffer(self.objective_impl.record_key, record)

        # -- learnable classifier-free guidance (Improved VQ-Diffusion, Sec. 3.2) ---------------------
        self.condition_seq_len = int(net_params.get("condition_seq_len",
                                                     getattr(self.transformer, "condition_seq_len", 77)))
        self.condition_dim = int(
            net_params.get("condition_dim", getattr(self.condition_emb, "embed_dim", 512) or 512)
        )
        self.learnable_cf = bool(learnable_cf)
        self.condition_padding_mask = bool(condition_padding_mask)
        if self.condition_padding_mask and "cond_mask" not in inspect.signature(self.transformer.forward).parameters:
            raise ValueError(
                "diffusion_config.params.condition_padding_mask is True but the network "
                f"{type(self.transformer).__name__} takes no 'cond_mask' (only the text network, "
                "Text2ImageTransformer, has a cross attention to mask)"
            )
        if self.learnable_cf:
            self.empty_text_embed = nn.Parameter(
                torch.randn(self.condition_seq_len, self.condition_dim, dtype=torch.float64)
            )

    # ----------------------------------------------------------------------------------------------
    # bookkeeping
    # ----------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.log_at.device

    def update_n_sample(self) -> None:
        """The official hook, called after changing ``prior_ps``; nothing to do here: ``prior_ps`` is a
        per-request option (``SamplingOptions.prior_ps``) and the tokens to reveal per step are computed per
        request from it (:func:`samplers.n_sample_table`)."""

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        check_checkpoint_records(self.objective_impl, state_dict, prefix)
        if self.condition_feature_cache is not None:  # the tower's weights may change: forget its features
            self.condition_feature_cache.clear()
        key = prefix + "empty_text_embed"
        if key in state_dict and not self.learnable_cf:
            warnings.warn(
                f"checkpoint has '{key}' (a learnable classifier-free model) but this DiffusionTransformer was "
                "built with learnable_cf=False; set 'learnable_cf: True' in diffusion_config.params (and "
                "model.params) to use it",
                stacklevel=3,
            )
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def _mask_and_replace_only(self, what: str) -> None:
        if not self.objective_impl.mask_and_replace:
            raise ValueError(
                f"{what} is the mask-and-replace process of objective 'vq_diffusion', but this model was trained "
                f"with objective {self.objective!r}: sample it with sample() / sampling.sample_tokens (the "
                "masked-diffusion ancestral sampler or MaskGIT), noise it with masked_elbo.mask_tokens"
            )

    # ----------------------------------------------------------------------------------------------
    # forward process q (Eq. 4-5) and posterior (Eq. 7, 11): forward_process.py, posterior.py
    # ----------------------------------------------------------------------------------------------
    @property
    def schedule(self) -> LogSchedule:
        """The schedule buffers as the math functions take them (references, on this module's device)."""
        return LogSchedule.from_module(self)

    def q_pred_one_timestep(self, log_x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``log q(x_t | x_{t-1} = j)`` (Eq. 4): :func:`forward_process.q_pred_one_timestep`."""
        self._mask_and_replace_only("q_pred_one_timestep")
        return forward_process.q_pred_one_timestep(self.schedule, log_x_t, t)

    def q_pred(self, log_x_start: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``log q(x_t | x_0)`` (Eq. 5), ``t = -1`` the identity: :func:`forward_process.q_pred`."""
        self._mask_and_replace_only("q_pred")
        return forward_process.q_pred(self.schedule, log_x_start, t)

    def q_sample(self, log_x_start: torch.Tensor, t: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Draw ``x_t ~ q(x_t | x_0)`` as a log one-hot (B, K+1, N): :func:`forward_process.q_sample`."""
        self._mask_and_replace_only("q_sample")
        return forward_process.q_sample(self.schedule, log_x_start, t, generator)

    def q_sample_index(self, x_start: torch.Tensor, t: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """:meth:`q_sample` from tokens x_0 (B, N) to tokens x_t (B, N), the same Gumbel draw:
        :func:`forward_process.q_sample_index`."""
        self._mask_and_replace_only("q_sample_index")
        return forward_process.q_sample_index(self.schedule, x_start, t, self.num_classes, generator)

    def q_posterior(self, log_x_start: torch.Tensor, log_x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The official signature of the posterior (Eq. 11), ``x_t`` as a log one-hot (B, K+1, N):
        :meth:`q_posterior_index` of its tokens (the one implementation, :mod:`posterior`)."""
        return self.q_posterior_index(log_x_start, log_onehot_to_index(log_x_t), t)

    def q_posterior_index(self, log_x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``log sum_k q(x_{t-1} | x_t, x_0 = k) p(x_0 = k)`` (Eq. 11), x_t as tokens (B, N):
        :func:`posterior.q_posterior_index`."""
        self._mask_and_replace_only("q_posterior")
        return posterior.q_posterior_index(self.schedule, log_x_start, x_t, t)

    # ----------------------------------------------------------------------------------------------
    # the network and p_theta (Eq. 11); the official sampling methods: official_sampling.py
    # ----------------------------------------------------------------------------------------------
    def precompute_condition(self, cond_emb: Any) -> Any:
        """The network's per-request condition cache (cross-attention keys/values), or None."""
        fn = getattr(self.transformer, "precompute_condition", None)
        if fn is None or cond_emb is None:
            return None
        return fn(cond_emb)

    def compiled_network(self, backend: str = "inductor") -> CompiledNetwork:
        """The network through ``torch.compile`` (one per backend, made on first use and kept: its graphs are
        reused by every later request of the same shape); see :mod:`network_runner`."""
        if backend not in self._compiled_networks:
            self._compiled_networks[backend] = CompiledNetwork(self.transformer, backend)
        return self._compiled_networks[backend]

    def condition_mask(self, condition_token: Any) -> Optional[torch.Tensor]:
        """The cross attention's padding mask (B, Lc) bool of text token ids (B, Lc) when
        ``condition_padding_mask`` is on (:func:`condition_input.padding_mask_from_tokens`), else None (no mask:
        also for class labels and for models that take the embedding itself)."""
        if not self.condition_padding_mask or self.condition_emb is None or not torch.is_tensor(condition_token) \
                or condition_token.dim() != 2:
            return None
        return padding_mask_from_tokens(condition_token.to(self.device))

    def _net_log_probs(self, x_t: torch.Tensor, cond_emb: Any, t: torch.Tensor, cond_cache: Any = None,
                       network: Optional[Callable[..., torch.Tensor]] = None,
                       cond_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``log p(x_0 | x_t)`` over the K tokens, clamped: (B, K, N) float32 whatever precision the network ran
        in (``network``: a request's ``NetworkRunner``; None: ``self.transformer`` as it is). ``cond_mask``
        (B, Lc) bool: the text padding mask, passed on only when given."""
        net = self.transformer if network is None else network
        extra = {} if cond_cache is None else {"cond_cache": cond_cache}
        if cond_mask is not None:
            extra["cond_mask"] = cond_mask
        out = net(x_t, cond_emb, t, **extra)
        K = self.num_classes - 1
        if out.dim() != 3 or out.shape[0] != x_t.shape[0] or out.shape[1] != K or out.shape[2] != x_t.shape[1]:
            raise ValueError(
                f"the network returned logits of shape {tuple(out.shape)}; expected (B, K, N) = "
                f"({x_t.shape[0]}, {K}, {x_t.shape[1]})"
            )
        return F.log_softmax(out.float(), dim=1).clamp(CLAMP_MIN, 0)

    def _append_mask_row(self, log_p: torch.Tensor) -> torch.Tensor:
        """(B, K, N) -> (B, K+1, N): the network predicts no [MASK] for x_0, so its row is -70 (log 0)."""
        B, _, N = log_p.shape
        return torch.cat([log_p, torch.full((B, 1, N), CLAMP_MIN, dtype=log_p.dtype, device=log_p.device)], dim=1)

    def predict_start_index(self, x_t: torch.Tensor, cond_emb: Any, t: torch.Tensor, cond_cache: Any = None,
                            cond_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``log p_theta(x_0 | x_t)`` from tokens x_t (B, N): (B, K+1, N), the [MASK] row at -70."""
        return self._append_mask_row(self._net_log_probs(x_t, cond_emb, t, cond_cache, cond_mask=cond_mask))

    def predict_start(self, log_x_t: torch.Tensor, cond_emb: Any, t: torch.Tensor) -> torch.Tensor:
        """``log p_theta(x_0 | x_t)`` (the x_0-parameterisation, Sec. 3.3): (B, K+1, N) -> (B, K+1, N)."""
        return self.predict_start_index(log_onehot_to_index(log_x_t), cond_emb, t)

    def cf_predict_start(self, log_x_t: torch.Tensor, cond_emb: Any, t: torch.Tensor) -> torch.Tensor:
        """The official hook name; here the same as :meth:`predict_start` (guidance is per request)."""
        return self.predict_start(log_x_t, cond_emb, t)

    def p_pred(self, log_x: torch.Tensor, cond_emb: Any, t: torch.Tensor):
        """``(log p_theta(x_{t-1} | x_t), log p_theta(x_0 | x_t))`` (Eq. 11)."""
        log_x_recon = self.predict_start(log_x, cond_emb, t)
        return self.q_posterior(log_x_recon, log_x, t), log_x_recon

    @torch.no_grad()
    def p_sample(self, log_x, cond_emb, t, sampled=None, to_sample=None, generator=None):
        """One ancestral step ``x_{t-1} ~ p_theta(x_{t-1} | x_t)`` (official signature, ``prior_rule`` 0).

        Returns ``(log one-hot x_{t-1}, sampled)`` when ``sampled`` is given (the official return),
        else the log one-hot alone. The Improved rules live in :func:`samplers.sample_improved`.
        """
        model_log_prob, _ = self.p_pred(log_x, cond_emb, t)
        out = log_sample_categorical(model_log_prob, self.num_classes, generator)
        if sampled is None:
            return out
        return out, [self.content_seq_len] * log_x.shape[0]

    # ----------------------------------------------------------------------------------------------
    # training (Sec. 3.3, Eq. 8-12)
    # ----------------------------------------------------------------------------------------------
    def multinomial_kl(self, log_prob1: torch.Tensor, log_prob2: torch.Tensor) -> torch.Tensor:
        """``KL(p1 || p2)`` over the classes, (B, C, N) -> (B, N) (the official method name)."""
        return multinomial_kl(log_prob1, log_prob2)

    def sample_time(self, b: int, device: torch.device, method: str = "uniform", generator=None):
        """t (B,) and p_t (B,), uniform then importance-sampled from the loss history, with the official
        random calls in the official order: :func:`losses.sample_time`."""
        return losses.sample_time(self.Lt_history, self.Lt_count, b, device, method, generator)

    def _train_loss(self, x: torch.Tensor, cond_emb: Any, is_train: bool = True, generator=None, cond_mask=None):
        """``(log_probs, per-sample loss (B,))`` of the model's objective (``objective_impl.loss``): for
        ``vq_diffusion`` ``L_t / p_t`` + the auxiliary x_0 loss (Eq. 12) and ``log p_theta(x_{t-1} | x_t)``;
        for ``masked_elbo`` one draw of its bound and ``log p_theta(x_0 | x_t)``."""
        return self.objective_impl.loss(self, x, cond_emb, is_train=is_train, generator=generator,
                                        cond_mask=cond_mask)

    def _condition_embedding(self, input: Mapping) -> Any:
        """The condition for the network, with the learnable-cf swap of empty captions in training
        (:func:`condition_input.training_condition`, without its padding mask)."""
        return training_condition(self, input)[0]

    def forward(
        self,
        input: Mapping,
        return_loss: bool = False,
        return_logits: bool = True,
        return_att_weight: bool = False,
        is_train: bool = True,
        **kwargs,
    ) -> dict:
        """Training forward: ``input`` has ``content_token`` (B, N) and the condition
        (``condition_token`` [+ ``condition_mask``], or ``condition_embed_token``).

        Returns ``{'logits': p_theta(x_{t-1} | x_t) (B, K+1, N), 'loss': per-token loss}`` (for
        ``objective: masked_elbo`` the logits are ``p_theta(x_0 | x_t)`` and the loss its bound, per token).
        """
        x = input["content_token"]
        cond_emb, cond_mask = training_condition(self, input)
        # the official ``autocast=True`` keyword: the network under autocast for this call (the loss math
        # turns it off for itself); a context, not a flag stored on the model
        with torch.autocast(x.device.type) if kwargs.get("autocast", False) else nullcontext():
            log_model_prob, loss = self._train_loss(x, cond_emb, is_train=is_train, generator=kwargs.get("generator"),
                                                    cond_mask=cond_mask)
        loss = loss.sum() / (x.shape[0] * x.shape[1])
        out = {}
        if return_logits:
            out["logits"] = torch.exp(log_model_prob)
        if return_loss:
            out["loss"] = loss
        return out

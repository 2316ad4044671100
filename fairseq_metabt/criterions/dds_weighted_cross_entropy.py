"""Per-example DDS for one language pair with noisy data (Wang et al. 2020, Alg. 1).

A scorer psi over cheap example features (lengths, length ratio, the model's
current per-token loss) gives one score per example; the softmax over the
batch, ``p_i``, weights the examples: ``g_theta = sum_i p_i grad l_i`` (line 5;
implemented as ``B p_i`` times each example's label-smoothed loss, so the
loss keeps its usual scale).

After fairseq's optimizer step (theta_{t-1} -> theta_t), at the start of the
next training call, the criterion

* takes the dev gradient ``d = grad J(theta_t, D_dev)`` on one dev batch (line 7), J being the
  training criterion (label-smoothed, per token), the same loss as the rewarded ``l_i``,
* computes ``r_i = d . grad l_i(theta_{t-1})`` for the previous batch by the
  Taylor trick (Eq. 7, ``modules/gradients.per_example_dot_taylor``) as a
  central difference around a shadow copy of theta_{t-1} (line 8; two forwards
  in eval mode), ``l_i`` being the very per-example loss that line 5 weights
  (label-smoothed, summed over the example's tokens),
* and updates psi by REINFORCE, ``psi += lr (1/B) sum_i r_i grad log p_i``
  (lines 9–10), with ``p_i`` the softmax over the same micro-batch that
  weighted example i in training, with its own Adam; psi is not among
  fairseq's parameters.

So the order of Alg. 1 is kept; only lines 7–10 run at the beginning of the
next step's call instead of the end of this one.
"""
# no "from __future__ import annotations": fairseq reads the config dataclass field types at runtime
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
from fairseq import metrics, utils
from fairseq.criterions import register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import (
    LabelSmoothedCrossEntropyCriterion,
    LabelSmoothedCrossEntropyCriterionConfig,
    label_smoothed_nll_loss,
)
from fairseq.data import data_utils
from fairseq.distributed import utils as distributed_utils
from omegaconf import II

from fairseq_metabt import validate
from fairseq_metabt.data.language_sampler import seeded_generator
from fairseq_metabt.errors import UserError, UserFileError
from fairseq_metabt.models.dual_transformer import unwrap
from fairseq_metabt.modules import amp
from fairseq_metabt.modules import gradients as G
from fairseq_metabt.modules.generation import eval_mode
from fairseq_metabt.modules.reinforce import policy_gradient_loss
from fairseq_metabt.modules.scorer import ExampleScorer

NUM_FEATURES = 5


@dataclass
class DDSWeightedCrossEntropyConfig(LabelSmoothedCrossEntropyCriterionConfig):
    dds_dev_subset: str = field(default="valid", metadata={"help": "split whose gradient is D_dev (Alg. 1 line 7)"})
    dds_dev_max_tokens: int = field(default=2048, metadata={"help": "tokens per dev batch for the dev gradient"})
    dds_scorer_lr: float = field(default=1e-4, metadata={"help": "Adam learning rate of the example scorer psi"})
    dds_scorer_hidden: int = field(default=32, metadata={"help": "hidden units of the example scorer"})
    dds_taylor_eps: float = field(
        default=1e-2, metadata={"help": "step length along d of the Taylor trick (Eq. 7), divided by ||d||"}
    )
    dds_freeze_scorer: bool = field(
        default=False, metadata={"help": "keep psi fixed (no dev gradient, no rewards): a fixed weighting"}
    )
    seed: int = field(default=1, metadata={"help": "seed of the scorer's initialisation and of the dev batch choice"})
    fp16: bool = II("common.fp16")
    bf16: bool = II("common.bf16")


def example_features(sample: Dict, token_nll: torch.Tensor, pad: int) -> torch.Tensor:
    """(B, 5): bias, log source length, log target length, log length ratio, mean per-token NLL (detached)."""
    src_len = sample["net_input"]["src_tokens"].ne(pad).sum(1).float()
    tgt_len = sample["target"].ne(pad).sum(1).float().clamp_min(1)
    return torch.stack([torch.ones_like(src_len), torch.log1p(src_len), torch.log1p(tgt_len),
                        torch.log((src_len + 1) / (tgt_len + 1)), token_nll.detach().float() / tgt_len], dim=1)


@register_criterion("dds_weighted_cross_entropy", dataclass=DDSWeightedCrossEntropyConfig)
class DDSWeightedCrossEntropyCriterion(LabelSmoothedCrossEntropyCriterion):
    """Label-smoothed cross-entropy with examples weighted by a DDS scorer (Alg. 1)."""

    def __init__(self, task, sentence_avg, label_smoothing, ignore_prefix_size=0, report_accuracy=False,
                 dds_dev_subset="valid", dds_dev_max_tokens=2048, dds_scorer_lr=1e-4, dds_scorer_hidden=32,
                 dds_taylor_eps=1e-2, dds_freeze_scorer=False, seed=1, fp16=False, bf16=False):
        super().__init__(task, sentence_avg, label_smoothing, ignore_prefix_size, report_accuracy)
        if dds_scorer_lr <= 0 or dds_taylor_eps <= 0 or dds_dev_max_tokens <= 0 or dds_scorer_hidden <= 0:
            raise UserError("--dds-scorer-lr, --dds-taylor-eps, --dds-dev-max-tokens and --dds-scorer-hidden must "
                             "be > 0")
        validate.config(locals())  # then every numeric argument: finite, in range (fairseq_metabt/validate.py)
        if not dds_freeze_scorer:
            amp.refuse_half_precision({"fp16": fp16, "bf16": bf16}, "dds_weighted_cross_entropy",
                                      "fairseq would cast the scorer psi, which has its own fp32 optimizer, to half "
                                      "precision (or pass --dds-freeze-scorer)")
        self.task = task
        self.dev_subset, self.dev_max_tokens, self.taylor_eps = dds_dev_subset, dds_dev_max_tokens, dds_taylor_eps
        self.freeze, self.seed = dds_freeze_scorer, seed
        self.scorer = ExampleScorer(NUM_FEATURES, dds_scorer_hidden, seed=seed)
        for p in self.scorer.parameters():
            p.requires_grad_(False)  # psi has its own optimizer: keep it out of fairseq's
        self.scorer_optimizer = torch.optim.Adam(self.scorer.parameters(), lr=dds_scorer_lr)
        self._previous: Optional[Dict] = None  # batch, features and shadow theta_{t-1} of the last step
        self._dev = None
        self.scorer_updates = 0
        self.last_dev_gradient: Optional[torch.Tensor] = None
        self.last_rewards: Optional[torch.Tensor] = None

    # ---- state: saved with the scorer's weights ------------------------------------------------------
    def get_extra_state(self) -> Dict:
        """fairseq saves a criterion that has parameters (psi) and restores it on resume; this adds psi's Adam
        state, the update counter (it seeds the dev-batch draw) and the pending previous batch with its
        shadow theta_{t-1}, so a resumed run takes the same scorer steps as an uninterrupted one."""
        return {"scorer_optimizer": self.scorer_optimizer.state_dict(), "scorer_updates": self.scorer_updates,
                "previous": self._previous}

    def set_extra_state(self, state: Dict) -> None:
        self.scorer_optimizer.load_state_dict(state["scorer_optimizer"])
        self.scorer_updates = int(state["scorer_updates"])
        self._previous = state.get("previous")

    # ---- Alg. 1 lines 7–10 for the previous batch ---------------------------------------------------
    def _dev_batch(self):
        if self._dev is None:
            if self.dev_subset not in self.task.datasets:
                try:
                    self.task.load_dataset(self.dev_subset)
                except FileNotFoundError as e:
                    raise UserFileError(f"--dds-dev-subset {self.dev_subset}: no such split ({e}); prepare a dev "
                                            "set of the pair or choose another split") from e
            ds = self.task.dataset(self.dev_subset)
            batches = data_utils.batch_by_size(ds.ordered_indices(), ds.num_tokens, max_tokens=self.dev_max_tokens)
            self._dev = (ds, batches)
        ds, batches = self._dev
        rank = distributed_utils.get_data_parallel_rank() if distributed_utils.get_data_parallel_world_size() > 1 else 0
        pick = int(torch.randint(len(batches), (1,), generator=seeded_generator(self.seed, self.scorer_updates, rank)))
        return ds.collater([ds[int(i)] for i in batches[pick]])

    def _example_losses(self, model, batch) -> torch.Tensor:
        """``l_i``: each example's label-smoothed loss summed over its tokens, as weighted in line 5."""
        net_output = model(**batch["net_input"])
        lprobs, target = self.get_lprobs_and_target(model, net_output, batch)
        tok_loss, _ = label_smoothed_nll_loss(lprobs, target, self.eps, ignore_index=self.padding_idx, reduce=False)
        return tok_loss.view(batch["target"].size(0), -1).sum(1)

    def _update_scorer(self, model, theta: List[torch.Tensor]) -> Dict[str, float]:
        prev, self._previous = self._previous, None
        inner = unwrap(model)
        dev = self._dev_batch()
        if theta[0].is_cuda:
            dev = utils.move_to_cuda(dev)
        with eval_mode(inner):  # line 7: d = grad J(theta_t, D_dev), J the training criterion per token
            dev_loss = self._example_losses(inner, dev).sum() / max(float(dev["ntokens"]), 1.0)
            d = G.flatten(torch.autograd.grad(dev_loss, theta, allow_unused=True), theta)
        G.all_reduce_mean_(d)
        if not bool(torch.isfinite(d).all()) or float(d.norm()) == 0.0:
            return {}
        # line 8 at the shadow theta_{t-1}: r_i = d . grad l_i(theta_{t-1}) by Eq. 7, a central difference
        # (two eval forwards) of the same per-example loss line 5 weights
        back = [s - p.detach() for s, p in zip(prev["shadow"], theta)]
        with G.shifted_params(theta, back, 1.0), eval_mode(inner):
            per_batch = [G.per_example_dot_taylor(lambda b=b: self._example_losses(inner, b), theta, d,
                                                  eps=self.taylor_eps, central=True).detach()
                         for b in prev["batches"]]
        rewards = torch.cat(per_batch)
        self.last_dev_gradient, self.last_rewards = d, rewards  # kept for inspection
        # lines 9–10: psi <- psi + lr (1/B) sum_i r_i grad log p_i, each p_i the softmax over the micro-batch
        # that weighted example i in training
        for p in self.scorer.parameters():
            p.requires_grad_(True)
        try:
            logp = torch.cat([self.scorer.log_weights(f) for f in prev["features"]])
            loss = policy_gradient_loss(logp, rewards) / len(rewards)
            self.scorer_optimizer.zero_grad()
            loss.backward()
            for p in self.scorer.parameters():
                G.all_reduce_mean_(p.grad)
            self.scorer_optimizer.step()
        finally:
            for p in self.scorer.parameters():
                p.requires_grad_(False)
        self.scorer_updates += 1
        return {"dds_reward": float(rewards.mean()), "dds_reward_std": float(rewards.std()) if len(rewards) > 1 else 0.0}

    # ---- Alg. 1 line 5 ----------------------------------------------------------------------------
    def forward(self, model, sample, reduce=True):
        training = model.training and torch.is_grad_enabled()
        theta = [p for p in unwrap(model).parameters() if p.requires_grad]
        log_extra: Dict[str, float] = {}
        if training and not self.freeze and self._previous is not None:
            if self._previous["shadow"][0].device != theta[0].device:  # restored from a CPU-loaded checkpoint
                self._previous = utils.move_to_cuda(self._previous) if theta[0].is_cuda else utils.move_to_cpu(
                    self._previous)
            changed = any(not torch.equal(s, p.detach()) for s, p in zip(self._previous["shadow"], theta))
            if changed:  # fairseq has stepped: theta_t is here, the previous batch's rewards can be taken
                with amp.full_precision(theta):  # rewards by finite differences and psi's loss stay fp32
                    log_extra = self._update_scorer(model, theta)
            elif amp.starts_update(theta):  # fairseq skipped or retries that update (overflow, OOM)
                self._previous = None  # its batches were never trained on: no reward for them
        net_output = model(**sample["net_input"])
        lprobs, target = self.get_lprobs_and_target(model, net_output, sample)
        tok_loss, tok_nll = label_smoothed_nll_loss(lprobs, target, self.eps, ignore_index=self.padding_idx,
                                                    reduce=False)
        bsz = sample["target"].size(0)
        ex_loss = tok_loss.view(bsz, -1).sum(1)
        ex_nll = tok_nll.view(bsz, -1).sum(1)
        features = example_features(sample, ex_nll, self.padding_idx)
        with torch.no_grad():
            weights = self.scorer.log_weights(features).exp() * bsz  # B p_i: mean weight 1
        loss = (weights.to(ex_loss) * ex_loss).sum() if reduce else weights.to(ex_loss) * ex_loss
        if training and not self.freeze:
            if self._previous is None:
                self._previous = {"shadow": [p.detach().clone() for p in theta], "batches": [], "features": []}
            # every micro-batch of one update shares theta_{t-1}
            self._previous["batches"].append(sample)
            self._previous["features"].append(features)
        sample_size = bsz if self.sentence_avg else sample["ntokens"]
        logging_output = {
            "loss": float(loss.detach().sum()), "nll_loss": float(ex_nll.detach().sum()),
            "ntokens": sample["ntokens"], "nsentences": bsz, "sample_size": sample_size,
            "dds_weight_max": float(weights.max()), "dds_updates": 1.0 if log_extra else 0.0,
        }
        logging_output.update(log_extra)
        return loss, sample_size, logging_output

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        super().reduce_metrics(logging_outputs)
        metrics.log_scalar("dds_weight_max", max(float(log.get("dds_weight_max", 0)) for log in logging_outputs),
                           weight=1, round=3)
        updates = sum(float(log.get("dds_updates", 0)) for log in logging_outputs)
        if updates:
            for key in ("dds_reward", "dds_reward_std"):
                metrics.log_scalar(key, sum(float(log.get(key, 0)) for log in logging_outputs) / updates,
                                   weight=updates, round=4)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return False  # dds_weight_max is a maximum


"""Wake-sleep back-translation (Cotterell & Kreutzer, 2018), online inside fairseq-train.

Task ``wake_sleep_translation`` (``docs/methods/wake_sleep.md``) trains the
forward model p_theta(y|x) and the backward model q_phi(x|y) of one
``dual_transformer`` on a bitext B, target monotext M_T and source monotext M_S.
Updates follow a schedule of phases, each training one direction while the
other is frozen and generates its data (Alg. 1):

* iteration 0 (``--ws-mle-updates``, optional): both directions by MLE on B;
* wake (Alg. 1 lines 2-6, Sec. 3.3): x~ = q_phi(y) for y in M_T; theta trains on
  B and the back-translated pairs (x~, y);
* sleep (Alg. 1 lines 7-11, Sec. 3.2): x~ drawn uniformly from M_S (p(x) is the
  empirical monotext, Sec. 3.3), y~ = p_theta(x~); phi trains on reversed B and
  the dreamt pairs (y~ -> x~).

One iteration is ``--wake-updates`` wake updates followed by ``--sleep-updates``
sleep updates; the phase and iteration are a function of the update number, so a
resumed run continues in the same phase.  Iteration 1's wake phase is standard
back-translation; greedy generation (the default) is the Viterbi approximation of
Sec. 3.4.  Pseudo data are generated per batch (``--ws-pseudo-data online``) or
once per phase for the whole monotext (``phase``: a cache reused for the phase).

Both models are in fairseq's one optimizer; the inactive direction's parameters
have ``requires_grad=False`` for the phase, so they get no gradient (``None``), and
fairseq's Adam, gradient clipping and legacy_ddp all-reduce skip them: Adam's
momentum cannot move a frozen model.
"""
# no "from __future__ import annotations": fairseq reads the config dataclass field types at runtime
import json
import logging
import math
import time
from dataclasses import dataclass, field
from argparse import Namespace
from typing import Dict, List, NamedTuple, Optional

import numpy as np
import torch
from fairseq import metrics, utils
from fairseq.data import data_utils
from fairseq.dataclass import ChoiceEnum
from fairseq.distributed import utils as distributed_utils
from fairseq.tasks import register_task
from fairseq.tasks.translation import EVAL_BLEU_ORDER, TranslationConfig, TranslationTask
from omegaconf import II

from fairseq_metabt import validate
from fairseq_metabt.checkpoints import initialise_directions
from fairseq_metabt.data.batches import reversed_batch, strip_padding
from fairseq_metabt.data.mono import generated_pairs, load_mono_dataset, mono_pair_dataset, mono_prefix
from fairseq_metabt.data.on_top import BitextWithMonoDataset, pseudo_loss_scale
from fairseq_metabt.errors import UserError
from fairseq_metabt.models.dual_transformer import DualTransformerModel, unwrap
from fairseq_metabt.modules import amp, ddp
from fairseq_metabt.modules import gradients as G
from fairseq_metabt.modules.generation import GenerationSettings, InStepGenerator
from fairseq_metabt.tasks.meta_backtranslation import MetaBacktranslationTask

logger = logging.getLogger(__name__)

GENERATION_CHOICES = ChoiceEnum(["greedy", "beam", "sample"])
PSEUDO_DATA_CHOICES = ChoiceEnum(["online", "phase"])
PHASES = ("mle", "wake", "sleep")


@dataclass
class WakeSleepConfig(TranslationConfig):
    seed: int = II("common.seed")
    max_update: int = II("optimization.max_update")
    fp16: bool = II("common.fp16")
    bf16: bool = II("common.bf16")
    ddp_backend: str = II("distributed_training.ddp_backend")
    distributed_world_size: int = II("distributed_training.distributed_world_size")
    log_interval: int = II("common.log_interval")
    mono_source_data: Optional[str] = field(
        default=None,
        metadata={"help": "prefix of the binarised source monotext M_S, drawn from in the sleep phase "
                          "(default: DATA/mono.SRC, as written by scripts/prepare_data.py)"},
    )
    mono_target_data: Optional[str] = field(
        default=None,
        metadata={"help": "prefix of the binarised target monotext M_T, back-translated in the wake phase "
                          "(default: DATA/mono.TGT)"},
    )
    wake_updates: int = field(
        default=1000, metadata={"help": "updates of each wake phase (forward model on B and back-translations)"}
    )
    sleep_updates: int = field(
        default=1000, metadata={"help": "updates of each sleep phase (backward model on reversed B and dreamt "
                                        "pairs)"}
    )
    ws_mle_updates: int = field(
        default=0, metadata={"help": "iteration 0: updates training both directions on the bitext only (MLE) "
                                     "before the first wake phase"}
    )
    ws_iterations: Optional[int] = field(
        default=None, metadata={"help": "number of wake-sleep iterations I; --max-update must then equal "
                                        "ws-mle-updates + I * (wake-updates + sleep-updates)"}
    )
    ws_pseudo_data: PSEUDO_DATA_CHOICES = field(
        default="online",
        metadata={"help": "generate pseudo data per batch (online) or once per phase for the whole monotext, "
                          "cached and reused for the phase (phase)"},
    )
    ws_gen_max_tokens: int = field(
        default=4096, metadata={"help": "tokens per generation batch when filling the phase cache"}
    )
    ws_generation: GENERATION_CHOICES = field(
        default="greedy", metadata={"help": "decoding of back-translations and dreamt translations: greedy "
                                            "(the paper's Viterbi approximation), beam or sample"}
    )
    ws_beam: int = field(default=5, metadata={"help": "beam size for --ws-generation beam"})
    ws_temperature: float = field(default=1.0, metadata={"help": "sampling temperature (--ws-generation sample)"})
    ws_sampling_topk: int = field(default=-1, metadata={"help": "sample from the k most likely tokens (-1: all)"})
    ws_sampling_topp: float = field(default=-1.0, metadata={"help": "nucleus sampling mass (-1: off)"})
    ws_max_len_a: float = field(default=1.2, metadata={"help": "generated length limit a*len(input)+b: a"})
    ws_max_len_b: int = field(default=10, metadata={"help": "generated length limit a*len(input)+b: b"})
    ws_pseudo_weight: float = field(
        default=1.0, metadata={"help": "weight w of the pseudo pairs: the trained direction's loss is its bitext "
                                       "per-token mean (as the translation baseline's, same batch) plus w times "
                                       "the pseudo pairs' own per-token mean; one pseudo pair per bitext sentence"}
    )
    forward_init: Optional[str] = field(
        default=None, metadata={"help": "initialise the forward model from this transformer checkpoint "
                                        "(e.g. an MLE model: iteration 0)"}
    )
    backward_init: Optional[str] = field(
        default=None, metadata={"help": "initialise the backward model from this transformer checkpoint "
                                        "(target->source)"}
    )


class Phase(NamedTuple):
    """Where update ``u`` lies in the schedule."""

    name: str  # "mle", "wake" or "sleep"
    iteration: int  # 0 for mle, then 1, 2, ...
    start: int  # first update of this phase
    position: int  # updates of this phase done before u


def phase_at(update: int, mle_updates: int, wake_updates: int, sleep_updates: int) -> Phase:
    """The phase of (0-based) update ``update``: mle^M, then (wake^W sleep^S) per iteration (Alg. 1 line 1)."""
    if update < mle_updates:
        return Phase("mle", 0, 0, update)
    u = update - mle_updates
    cycle = wake_updates + sleep_updates
    iteration, pos = u // cycle + 1, u % cycle
    start = mle_updates + (iteration - 1) * cycle
    if pos < wake_updates:
        return Phase("wake", iteration, start, pos)
    return Phase("sleep", iteration, start + wake_updates, pos - wake_updates)


@register_task("wake_sleep_translation", dataclass=WakeSleepConfig)
class WakeSleepTranslationTask(TranslationTask):
    """Forward and backward Transformers trained by alternating wake and sleep phases."""

    cfg: WakeSleepConfig

    def __init__(self, cfg: WakeSleepConfig, src_dict, tgt_dict):
        super().__init__(cfg, src_dict, tgt_dict)
        self._check_config(cfg)
        validate.config(cfg, vocab=len(src_dict))  # the component's own messages first; then finite and in range
        self.settings = GenerationSettings(cfg.ws_generation, cfg.ws_beam, cfg.ws_temperature, cfg.ws_sampling_topk,
                                           cfg.ws_sampling_topp, cfg.ws_max_len_a, cfg.ws_max_len_b)
        self._generators: Dict[str, InStepGenerator] = {}
        self._mono: Dict[str, object] = {}  # "tgt" (wake) / "src" (sleep): source-only LanguagePairDatasets
        self._cache: Optional[Dict] = None  # phase mode: {"start", "rows": {mono id: generated tokens}}
        self.progress = {"phase": None, "iteration": 0, "phase_start": 0, "updates_done": 0, "switches": 0}
        self._bwd_eval = None  # (backward model, its --eval-bleu generator)
        self._entered: Optional[int] = None  # start of the phase this process has set up (not checkpointed)

    @staticmethod
    def _check_config(cfg: WakeSleepConfig) -> None:
        amp.refuse_half_precision(cfg, "wake_sleep_translation", "it freezes one direction per phase, which "
                                  "fairseq's half-precision optimizers (flat fp32 copies of all parameters) cannot")
        ddp.refuse_pytorch_ddp(cfg, "wake_sleep_translation", "it freezes one direction per phase after torch's "
                               "DDP has hooked every parameter, so the frozen direction never reports a gradient "
                               "and the second update stops in DDP's reducer")
        for name in ("wake_updates", "sleep_updates"):
            if getattr(cfg, name) < 1:
                raise UserError(
                    f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}: each iteration needs a "
                    "wake and a sleep phase (for back-translation alone, use --ws-iterations 1)")
        if cfg.ws_mle_updates < 0:
            raise UserError(f"--ws-mle-updates must be >= 0, got {cfg.ws_mle_updates}")
        if cfg.ws_gen_max_tokens < 1:
            raise UserError(f"--ws-gen-max-tokens must be >= 1, got {cfg.ws_gen_max_tokens}")
        if cfg.ws_pseudo_weight < 0:
            raise UserError(f"--ws-pseudo-weight must be >= 0, got {cfg.ws_pseudo_weight}")
        if cfg.ws_iterations is not None:
            if cfg.ws_iterations < 1:
                raise UserError(f"--ws-iterations must be >= 1, got {cfg.ws_iterations} (iteration 0, MLE, is "
                                 "--ws-mle-updates)")
            total = cfg.ws_mle_updates + cfg.ws_iterations * (cfg.wake_updates + cfg.sleep_updates)
            if cfg.max_update != total:
                raise UserError(
                    f"--ws-iterations {cfg.ws_iterations} with --ws-mle-updates {cfg.ws_mle_updates}, --wake-updates "
                    f"{cfg.wake_updates} and --sleep-updates {cfg.sleep_updates} takes {total} updates: set "
                    f"--max-update {total} (got {cfg.max_update})")

    def phase(self, update: int) -> Phase:
        c = self.cfg
        return phase_at(update, c.ws_mle_updates, c.wake_updates, c.sleep_updates)

    # ---- data -----------------------------------------------------------------------------
    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        super().load_dataset(split, epoch, combine, **kwargs)
        if split != self.cfg.train_subset:
            return
        c = self.cfg
        for side, lang, override, option, needed in (
            ("tgt", c.target_lang, c.mono_target_data, "--mono-target-data",
             "the wake phase back-translates target monotext M_T"),
            ("src", c.source_lang, c.mono_source_data, "--mono-source-data",
             "the sleep phase draws source sentences from source monotext M_S"),
        ):
            mono = load_mono_dataset(mono_prefix(c.data, lang, override), self.src_dict, c.dataset_impl, lang,
                                     f"wake_sleep_translation: {needed} (mono.{lang})", option)
            self._mono[side] = mono_pair_dataset(mono, self.src_dict, c.left_pad_source)
        # batches are the bitext's own (as --task translation makes them); monotext comes on top of them
        self.datasets[split] = BitextWithMonoDataset(
            self.datasets[split], {"mono_tgt": self._mono["tgt"], "mono_src": self._mono["src"]}, c.seed)

    # ---- model ----------------------------------------------------------------------------
    def build_model(self, cfg, from_checkpoint=False):
        model = super().build_model(cfg, from_checkpoint)
        if not isinstance(model, DualTransformerModel):
            raise UserError(
                "wake_sleep_translation needs a forward and a backward model: use --arch dual_transformer_tiny, "
                f"dual_transformer_small or dual_transformer_base (got {type(model).__name__})"
            )
        initialise_directions(model, self, self.cfg.forward_init, self.cfg.backward_init, from_checkpoint)
        self._generators = {}
        return model

    @staticmethod
    def direction_parameters(dual: DualTransformerModel) -> Dict[str, List[torch.nn.Parameter]]:
        """theta (forward: the dual model's own encoder/decoder) and phi (backward_model)."""
        backward = {id(p) for p in dual.backward_model.parameters()}
        return {"forward": [p for p in dual.parameters() if id(p) not in backward],
                "backward": list(dual.backward_model.parameters())}

    def _freeze_for(self, dual: DualTransformerModel, phase: Phase) -> None:
        """Only the phase's trained direction(s) get gradients; the other stays exactly as it is."""
        active = {"mle": ("forward", "backward"), "wake": ("forward",), "sleep": ("backward",)}[phase.name]
        for direction, params in self.direction_parameters(dual).items():
            for p in params:
                p.requires_grad_(direction in active)

    def _generator(self, model: torch.nn.Module, direction: str) -> InStepGenerator:
        gen = self._generators.get(direction)
        if gen is None or gen.model is not model:
            gen = self._generators[direction] = InStepGenerator(model, self.src_dict, self.settings)
        return gen

    # ---- pseudo data --------------------------------------------------------------------------
    def _generate(self, dual: DualTransformerModel, phase: Phase, mono: Dict, log: Dict) -> List[torch.Tensor]:
        """x~ = q_phi(y) for the mono batch (wake, Alg. 1 line 4) or y~ = p_theta(x~) (sleep, line 9)."""
        if self.cfg.ws_pseudo_data == "phase":
            if self._cache is None or self._cache["start"] != phase.start:
                self._fill_cache(dual, phase)
            rows = self._cache["rows"]
            return [rows[int(i)] for i in mono["id"].tolist()]
        model = dual.backward_model if phase.name == "wake" else dual
        started = time.perf_counter()
        out = self._generator(model, "backward" if phase.name == "wake" else "forward")(mono["net_input"])
        log["gen_time"] = time.perf_counter() - started
        log["gen_sents"] = len(out)
        return out

    def _fill_cache(self, dual: DualTransformerModel, phase: Phase) -> None:
        """Generate for the phase's whole monotext once (batched, sharded over workers).

        The generating model is frozen during the phase and the RNG is seeded by the phase's
        first update, so a run resumed mid-phase regenerates exactly the same cache."""
        side, direction = ("tgt", "backward") if phase.name == "wake" else ("src", "forward")
        model = dual.backward_model if direction == "backward" else dual
        ds = self._mono[side]
        with data_utils.numpy_seed(self.cfg.seed, phase.start):  # ordered_indices shuffles within lengths
            order = ds.ordered_indices()
        batches = data_utils.batch_by_size(order, ds.num_tokens, max_tokens=self.cfg.ws_gen_max_tokens)
        world = distributed_utils.get_data_parallel_world_size()
        rank = distributed_utils.get_data_parallel_rank() if world > 1 else 0
        generator = self._generator(model, direction)
        device = next(model.parameters()).device
        started = time.perf_counter()
        rows: Dict[int, torch.Tensor] = {}
        with utils.set_torch_seed((self.cfg.seed * 1000003 + phase.start * 7919 + rank) % 2**31):
            for idx in batches[rank::world]:
                batch = ds.collater([ds[int(i)] for i in idx])
                if device.type == "cuda":
                    batch = utils.move_to_cuda(batch)
                for i, out in zip(batch["id"].tolist(), generator(batch["net_input"])):
                    rows[int(i)] = out.cpu()
        elapsed = time.perf_counter() - started
        if world > 1:
            rows = _all_gather_rows(rows)
        lengths = [r.numel() - 1 for r in rows.values()]
        self._cache = {"start": phase.start, "rows": rows, "side": side}
        metrics.log_scalar("cache_gen_s", elapsed, weight=1, round=3)
        metrics.log_scalar("cache_size", len(rows), weight=1, round=0)
        local = sum(len(b) for b in batches[rank::world])
        logger.info("wake-sleep: %s phase of iteration %d: %d %s generated by the %s model in %.3fs "
                    "(%.2f sentences/s on this worker, mean length %.2f)", phase.name, phase.iteration, len(rows),
                    "back-translations" if phase.name == "wake" else "dreamt translations", direction, elapsed,
                    local / max(elapsed, 1e-9), sum(lengths) / max(len(lengths), 1))

    # ---- one update ------------------------------------------------------------------------------
    @amp.amp_train_step
    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        dual = unwrap(model)
        phase = self.phase(update_num)
        self._enter(phase, dual)
        model.train()
        model.set_num_updates(update_num)
        bitext = sample["bitext"]
        pad, eos = self.src_dict.pad(), self.src_dict.eos()
        log: Dict[str, float] = {"phase_" + phase.name: 1.0, "iteration": float(phase.iteration)}
        parts = []  # (loss, sample_size, logging_output, metric prefix)

        if phase.name in ("mle", "wake"):  # theta on B
            parts.append((*criterion(model, bitext), "fwd_bitext"))
        if phase.name in ("mle", "sleep"):  # phi on reversed B
            rev = reversed_batch(bitext, pad, eos)
            rev = utils.move_to_cuda(rev) if bitext["target"].is_cuda else rev
            parts.append((*criterion(dual.backward_model, rev), "bwd_bitext"))
        if phase.name in ("wake", "sleep"):
            mono = sample["mono_tgt" if phase.name == "wake" else "mono_src"]
            real = strip_padding(mono["net_input"]["src_tokens"], pad)
            generated = self._generate(dual, phase, mono, log)
            pairs = generated_pairs(generated, real, pad, eos)
            log["pseudo_count"] = float(len(pairs["kept"]))
            log["pseudo_empty"] = float(len(generated) - len(pairs["kept"]))
            log["pseudo_len_sum"] = float(sum(generated[i].numel() - 1 for i in pairs["kept"]))
            if "batch" in pairs:
                batch = pairs["batch"]
                batch = utils.move_to_cuda(batch) if bitext["target"].is_cuda else batch
                # wake: (x~, y) for theta; sleep: (y~ -> x~) for phi, the dreamt bitext
                target_model = model if phase.name == "wake" else dual.backward_model
                loss, size, lo = criterion(target_model, batch)
                parts.append((loss, size, lo,
                              "fwd_pseudo" if phase.name == "wake" else "bwd_dream"))
            else:  # every worker logs the same keys, of the same kind (a tensor where the others have one):
                # fairseq all-reduces the logging outputs key by key, and a mismatch aborts the collective
                name = "fwd_pseudo" if phase.name == "wake" else "bwd_dream"
                log[name + "_loss"] = bitext["target"].new_zeros((), dtype=torch.float)
                log[name + "_ntokens"] = 0.0

        # the first part (the phase's bitext) is normalised as the baseline's; every other part is
        # added on top as w times its own mean (weight 1 for the second direction's bitext in iteration 0)
        base_loss, sample_size, base_log, _ = parts[0]
        total = base_loss
        for loss, size, lo, name in parts[1:]:
            weight = 1.0 if name == "bwd_bitext" else self.cfg.ws_pseudo_weight
            total = total + loss * pseudo_loss_scale(weight, sample_size, size)
        if ignore_grad:
            total = total * 0
        optimizer.backward(total)

        # losses stay tensors (fairseq's criterions do the same): summed on the device and read once, in
        # reduce_metrics, instead of one host sync per part of every update
        out = {"loss": total.detach(), "sample_size": sample_size,
               "ntokens": base_log["ntokens"], "nsentences": base_log["nsentences"]}
        if "nll_loss" in base_log:
            out["nll_loss"] = base_log["nll_loss"]
        for loss, size, lo, name in parts:
            log[name + "_loss"] = lo["loss"]
            log[name + "_ntokens"] = float(lo["ntokens"])
        for k, v in log.items():
            out["ws_" + k] = v
        return total, sample_size, out

    def _enter(self, phase: Phase, dual: DualTransformerModel) -> None:
        """Freeze the inactive direction; at a phase switch, log it and drop the previous cache."""
        self._freeze_for(dual, phase)
        if self._entered == phase.start:
            return
        self._entered = phase.start
        if self.progress["phase_start"] != phase.start or self.progress["phase"] != phase.name:
            if self.progress["phase"] is not None:
                self.progress["switches"] += 1
            self.progress.update(phase=phase.name, iteration=phase.iteration, phase_start=phase.start)
        if self._cache is not None and self._cache["start"] != phase.start:
            self._cache = None
        length = {"mle": self.cfg.ws_mle_updates, "wake": self.cfg.wake_updates,
                  "sleep": self.cfg.sleep_updates}[phase.name]
        logger.info("wake-sleep: iteration %d, %s phase: updates %d-%d%s", phase.iteration, phase.name,
                    phase.start + 1, phase.start + length,
                    f" (resumed at update {phase.start + phase.position + 1})" if phase.position else "")

    def optimizer_step(self, optimizer, model, update_num):
        skipped = amp.update_skipped(optimizer)  # --amp overflow: fairseq retries or drops the update
        optimizer.step()
        if skipped:
            return
        self.progress["updates_done"] = update_num + 1
        if G.log_due(update_num, self.cfg):  # fp64 checksums and an all-reduce: a host sync, at the log interval
            params = self.direction_parameters(unwrap(model))
            MetaBacktranslationTask._check_replicas(params["forward"], params["backward"])

    # ---- validation: both directions' dev loss ----------------------------------------------
    def valid_step(self, sample, model, criterion):
        loss, sample_size, logging_output = super().valid_step(sample, model, criterion)
        dual = unwrap(model)
        rev = reversed_batch(sample, self.src_dict.pad(), self.src_dict.eos())
        rev = utils.move_to_cuda(rev) if sample["target"].is_cuda else rev
        with torch.no_grad():
            bwd_loss, _, _ = criterion(dual.backward_model, rev)
        logging_output["ws_bwd_valid_loss"] = float(bwd_loss)
        logging_output["ws_bwd_valid_ntokens"] = float(rev["ntokens"])
        if self.cfg.eval_bleu:  # the backward model's dev BLEU too (--eval-bleu scores only the forward one)
            bleu = self._inference_with_bleu(self._backward_bleu_generator(dual), rev, dual.backward_model)
            logging_output["ws_bwd_bleu_sys_len"] = bleu.sys_len
            logging_output["ws_bwd_bleu_ref_len"] = bleu.ref_len
            for i in range(EVAL_BLEU_ORDER):
                logging_output[f"ws_bwd_bleu_counts_{i}"] = bleu.counts[i]
                logging_output[f"ws_bwd_bleu_totals_{i}"] = bleu.totals[i]
        return loss, sample_size, logging_output

    def _backward_bleu_generator(self, dual: DualTransformerModel):
        """fairseq's generator for --eval-bleu (same --eval-bleu-args), on the backward model."""
        if self._bwd_eval is None or self._bwd_eval[0] is not dual.backward_model:
            args = Namespace(**json.loads(self.cfg.eval_bleu_args))
            self._bwd_eval = (dual.backward_model, self.build_generator([dual.backward_model], args))
        return self._bwd_eval[1]

    # ---- state -----------------------------------------------------------------------------
    def get_checkpoint_dict(self) -> Dict:
        c = self.cfg
        state = dict(self.progress)
        state["schedule"] = [c.ws_mle_updates, c.wake_updates, c.sleep_updates]
        state["position_in_phase"] = state["updates_done"] - state["phase_start"]
        state["cache"] = None if self._cache is None else {"phase_start": self._cache["start"],
                                                           "size": len(self._cache["rows"])}
        return {self.__class__.__name__: state}

    def set_checkpoint_dict(self, state: Dict) -> None:
        c = self.cfg
        schedule = [c.ws_mle_updates, c.wake_updates, c.sleep_updates]
        if list(state.get("schedule", schedule)) != schedule:
            mle, wake, sleep = state["schedule"]
            raise UserError(
                f"the checkpoint was trained with --ws-mle-updates {mle} --wake-updates {wake} --sleep-updates "
                f"{sleep}; resume with the same schedule (or start a new --save-dir)")
        for key in ("phase", "iteration", "phase_start", "updates_done", "switches"):
            if key in state:
                self.progress[key] = state[key]
        # a phase cache is regenerated on the next update: same frozen model, same seed, same data
        self._cache = None

    # ---- metrics ---------------------------------------------------------------------------
    def reduce_metrics(self, logging_outputs, criterion):
        super().reduce_metrics(logging_outputs, criterion)

        def total(key):
            return sum(float(log.get("ws_" + key, 0)) for log in logging_outputs)

        steps = sum(total("phase_" + p) for p in PHASES)
        if steps > 0:
            metrics.log_scalar("ws_iter", total("iteration") / steps, steps, round=2)
            metrics.log_scalar("ws_sleep", total("phase_sleep") / steps, steps, round=2)
        ln2 = math.log(2)
        for name in ("fwd_bitext", "fwd_pseudo", "bwd_bitext", "bwd_dream", "bwd_valid"):
            if total(name + "_ntokens") > 0:
                metrics.log_scalar(name + "_loss", total(name + "_loss") / total(name + "_ntokens") / ln2,
                                   total(name + "_ntokens"), round=3)
        if total("pseudo_count") > 0:
            metrics.log_scalar("pseudo_len", total("pseudo_len_sum") / total("pseudo_count"),
                               total("pseudo_count"), round=2)
        if steps > 0 and any("ws_pseudo_count" in log for log in logging_outputs):
            metrics.log_scalar("pseudo_pairs", total("pseudo_count"), 1, round=1)
            metrics.log_scalar("pseudo_empty", total("pseudo_empty"), 1, round=1)
        if total("gen_time") > 0:
            metrics.log_scalar("gen_sps", total("gen_sents") / total("gen_time"), 1, round=1)
        totals = [total(f"bwd_bleu_totals_{i}") for i in range(EVAL_BLEU_ORDER)]
        if max(totals) > 0:
            metrics.log_scalar("_bwd_bleu_counts", np.array([total(f"bwd_bleu_counts_{i}")
                                                             for i in range(EVAL_BLEU_ORDER)]))
            metrics.log_scalar("_bwd_bleu_totals", np.array(totals))
            metrics.log_scalar("_bwd_bleu_sys_len", total("bwd_bleu_sys_len"))
            metrics.log_scalar("_bwd_bleu_ref_len", total("bwd_bleu_ref_len"))
            metrics.log_derived("bwd_bleu", _backward_bleu)


def _backward_bleu(meters) -> float:
    """Corpus BLEU of the backward model from the summed n-gram statistics (as TranslationTask does)."""
    from sacrebleu.metrics import BLEU

    bleu = BLEU.compute_bleu(correct=meters["_bwd_bleu_counts"].sum, total=meters["_bwd_bleu_totals"].sum,
                             sys_len=int(meters["_bwd_bleu_sys_len"].sum),
                             ref_len=int(meters["_bwd_bleu_ref_len"].sum), smooth_method="exp")
    return round(bleu.score, 2)


def _all_gather_rows(rows: Dict[int, torch.Tensor]) -> Dict[int, torch.Tensor]:
    """Union of every worker's generated rows (each worker generated a shard of the monotext)."""
    parts = G.all_gather_objects({i: r.tolist() for i, r in rows.items()})
    return {int(i): torch.tensor(r, dtype=torch.long) for part in parts for i, r in part.items()}

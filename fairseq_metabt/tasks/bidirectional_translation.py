"""Bi-directional tagged translation (Niu et al. 2019, §3; Johnson et al. 2017).

One model translates a pair f–e in both directions: ``train`` (and, by
default, ``valid``) is the bitext plus its swap, every sentence tagged as in
:mod:`fairseq_metabt.data.bidirectional` (source: tag of the language to
translate into; target: tag of the language it came from), one shared
dictionary.  Other splits hold only the ``-s → -t`` direction, so
``fairseq-generate --gen-subset test -s f -t e`` (and ``-s e -t f``) evaluates
one direction, with the tag forced as the first output token and stripped
from the output.
"""

import logging
from dataclasses import dataclass, field
from typing import List

import torch
from fairseq import utils
from fairseq.data import LanguagePairDataset
from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask

from fairseq_metabt import validate
from fairseq_metabt.data.bidirectional import load_bidirectional_pair, reverse_tag_map, target_tag_prefix
from fairseq_metabt.data.tagging import lang_tag, missing_tags
from fairseq_metabt.errors import UserError
from fairseq_metabt.modules import amp

logger = logging.getLogger(__name__)


@dataclass
class BidirectionalTranslationConfig(TranslationConfig):
    both_directions_splits: str = field(
        default="train,valid",
        metadata={"help": "comma-separated splits loaded as the corpus plus its swap (both directions); "
                          "every other split (e.g. test for fairseq-generate) holds only -s → -t"},
    )


@register_task("bidirectional_translation", dataclass=BidirectionalTranslationConfig)
class BidirectionalTranslationTask(TranslationTask):
    """f↔e in one model with language tags on sources and targets (Niu et al. 2019, §3)."""

    cfg: BidirectionalTranslationConfig

    @classmethod
    def setup_task(cls, cfg: BidirectionalTranslationConfig, **kwargs) -> "BidirectionalTranslationTask":
        task = super().setup_task(cfg, **kwargs)
        src, tgt = cfg.source_lang, cfg.target_lang
        if task.src_dict.symbols != task.tgt_dict.symbols:
            raise UserError(
                f"bidirectional_translation needs one joint dictionary, but dict.{src}.txt and dict.{tgt}.txt "
                "differ. Prepare the data with scripts/prepare_data.py (it writes one dict.txt and copies it "
                "per language)."
            )
        missing = missing_tags(task.src_dict, (src, tgt))
        if missing:
            raise UserError(
                f"bidirectional_translation: the dictionary dict.{src}.txt lacks the language tag(s) "
                f"{', '.join(missing)} of the pair {src}-{tgt}. Prepare the data with scripts/prepare_data.py "
                "(it adds a tag __LANG__ for every language), or append a line '<tag> 1' per missing tag to "
                "every dict.*.txt before binarising."
            )
        return task

    def __init__(self, cfg: BidirectionalTranslationConfig, src_dict, tgt_dict) -> None:
        super().__init__(cfg, src_dict, tgt_dict)
        validate.config(cfg)
        self.tag_map = reverse_tag_map(src_dict, cfg.source_lang, cfg.target_lang)

    @amp.amp_train_step
    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        """fairseq's step, under the plugin's autocast: fairseq's own autocasts on CUDA only, so without this
        ``--amp --cpu`` would run STGS in fp32 and the CPU tests would not exercise the bf16 path."""
        return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad)

    @property
    def both_directions_splits(self) -> List[str]:
        return [s.strip() for s in self.cfg.both_directions_splits.split(",") if s.strip()]

    def load_dataset(self, split: str, epoch: int = 1, combine: bool = False, **kwargs) -> None:
        paths = utils.split_paths(self.cfg.data)
        data_path = paths[(epoch - 1) % len(paths)] if split == self.cfg.train_subset else paths[0]
        both = split in self.both_directions_splits
        self.datasets[split] = load_bidirectional_pair(
            data_path, split, self.cfg.source_lang, self.cfg.target_lang, self.src_dict,
            both_directions=both, impl=self.cfg.dataset_impl, left_pad_source=self.cfg.left_pad_source,
            left_pad_target=self.cfg.left_pad_target, shuffle=(split != "test"),
        )
        logger.info("%s %s: %d examples (%s)", split, f"{self.cfg.source_lang}-{self.cfg.target_lang}",
                    len(self.datasets[split]), "both directions" if both else "one direction")

    def build_dataset_for_inference(self, src_tokens, src_lengths, constraints=None) -> LanguagePairDataset:
        """Raw sources (fairseq-interactive) get the target-language tag, like the training sources."""
        tag = self.src_dict.index(lang_tag(self.cfg.target_lang))
        tagged = [torch.cat([t.new_tensor([tag]), t]) for t in src_tokens]
        return LanguagePairDataset(tagged, [n + 1 for n in src_lengths], self.source_dictionary,
                                   tgt_dict=self.target_dictionary, constraints=constraints)

    def target_tags(self, src_tokens: torch.Tensor) -> torch.Tensor:
        """``(B, 1)``: the tag each row's translation starts with (the language of its source)."""
        return target_tag_prefix(src_tokens, self.src_dict.pad(), self.tag_map)

    def build_generator(self, models, args, seq_gen_cls=None, extra_gen_cls_kwargs=None,
                        prefix_allowed_tokens_fn=None):
        extra = dict(extra_gen_cls_kwargs or {})
        # the forced output tag is not part of the translation
        extra.setdefault("symbols_to_strip_from_output", set(self.tag_map.values()))
        return super().build_generator(models, args, seq_gen_cls, extra, prefix_allowed_tokens_fn)

    def inference_step(self, generator, models, sample, prefix_tokens=None, constraints=None):
        if prefix_tokens is None:
            prefix_tokens = self.target_tags(sample["net_input"]["src_tokens"])
        return super().inference_step(generator, models, sample, prefix_tokens, constraints)

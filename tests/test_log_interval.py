"""Diagnostics that need a host synchronisation are computed at fairseq's log interval, not every update."""
from types import SimpleNamespace

import pytest
import torch

from test_latent_depth_unit import _batch, _dictionary, _model

pytestmark = pytest.mark.fast


def test_log_due_follows_fairseqs_log_interval():
    from fairseq_metabt.modules import gradients as G

    cfg = SimpleNamespace(log_interval=5)
    # fairseq logs after the update that makes num_updates (= update_num + 1) a multiple of the interval
    assert [u for u in range(12) if G.log_due(u, cfg)] == [4, 9]
    assert all(G.log_due(u, {"log_interval": 1}) for u in range(3))
    assert G.log_due(7, SimpleNamespace(log_interval="${common.log_interval}")), "unresolvable: every update"


def test_latent_criterion_diagnostics_only_at_the_log_interval():
    from fairseq_metabt.criterions.latent_layers_loss import LatentLayersLossCriterion

    model = _model("--decoder-target-layers", "2")
    crit = LatentLayersLossCriterion(SimpleNamespace(target_dictionary=_dictionary()), False, 0.1,
                                     latent_kl_weight=1.0, latent_lk_weight=0.5, log_interval=4)
    src, lengths, prev = _batch()
    sample = {"net_input": {"src_tokens": src, "src_lengths": lengths, "prev_output_tokens": prev,
                            "latent_lang": 1},
              "target": torch.cat([prev[:, 1:], torch.full((3, 1), 2)], 1), "ntokens": 18}
    model.train()
    logs = {}
    for update in (2, 3):
        model.set_num_updates(update)
        logs[update] = crit(model, sample)[2]
    quiet, logged = logs[2], logs[3]
    assert "latent_kl" in quiet and "latent_kl_gnorm" not in quiet and not any(k.startswith("q_") for k in quiet)
    assert logged["latent_diag_batches"] == 1 and logged["latent_kl_gnorm"] > 0 and "q_dec_bb_3" in logged
    model.eval()  # validation: always
    with torch.no_grad():
        assert "q_dec_bb_3" in crit(model, sample)[2]

"""DDS vs uniform sampling: same task, model, data, batching by target and split by language; the baseline
keeps the uniform p(S_i|y) fixed (--dds-update-scorer false), so the ratio is the price of DDS itself: every
K updates the dev gradient over the dev set, one fresh batch's gradient per language, the rewards and the
scorer's E steps (with --dds-grad-source ema instead: the per-language gradient shares and EMAs every update)."""
from benchmark import USER_DIR, BenchmarkMethod, common_args

PAIRS = "lrl-tgt,hrl-tgt,unra-tgt,unrb-tgt,nsy-tgt"


def build(bin_dir, args):
    common = common_args(bin_dir, args) + [
        "--user-dir", USER_DIR, "--task", "dds_translation", "--arch", args.arch, "--lang-pairs", PAIRS,
        "--dds-dev-lang-pair", f"{args.source_lang}-{args.target_lang}", "--dds-init", "uniform",
        "--dds-dev-max-tokens", str(args.max_tokens),
    ]
    return {"method": common, "baseline": common + ["--dds-update-scorer", "false"]}


METHOD = BenchmarkMethod(build, preset="multilingual",
                         sizes="train=1000,hrl=3000,unra=3000,unrb=3000,nsy=3000,valid=100,test=100,"
                               "mono_tgt=100,mono_lrl=100,pool=4000")

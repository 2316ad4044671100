"""MetaBT vs online back-translation: same dual model, data, batches and sampling; only the
backward model's meta update (dev gradient, reward, REINFORCE + MLE step) differs."""
from benchmark import USER_DIR, BenchmarkMethod, common_args


def build(bin_dir, args):
    arch = args.arch.replace("transformer_lowres_", "dual_transformer_")
    common = common_args(bin_dir, args) + [
        "--user-dir", USER_DIR, "--task", "meta_backtranslation", "--arch", arch,
        "--bt-generation", "sample", "--meta-dev-max-tokens", str(args.max_tokens // 2),
    ]
    return {"method": common, "baseline": common + ["--freeze-backward"]}


METHOD = BenchmarkMethod(build, preset="quickstart")

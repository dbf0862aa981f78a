"""mergekit 0.1.5 as a reference for merge/methods.py: its merged tensors against ours.

    .venv/bin/python bench/mergekit_check.py --mergekit-python /tmp/mk/venv/bin/python \
        [--out DIR] [--measure-install VENV_DIR]

mergekit runs in another interpreter (a subprocess of `mergekit-yaml`), so the project's venv
needs no mergekit. The script builds a tiny base (hidden 64, 2 layers, 4 heads, 2 KV heads,
intermediate 256) and two specialists = base + seeded noise, saves them with
`bitnet.checkpoint.save_checkpoint`, merges them with mergekit for each case below (the YAML of
each is printed, and mergekit also leaves it as `mergekit_config.yml` in `DIR/<case>/` beside
the merged `model.safetensors`), and compares mergekit's tensors with `merge.methods`:

- linear, task arithmetic and TIES: max |mergekit - ours| over all tensors, once with mergekit's
  defaults and equal weights, once with unequal weights (and another lambda / density).
  `task_arithmetic_normalize` sets mergekit's `normalize: true` (its default is false).
- DARE (dare_linear with one and with two specialists, dare_ties): mergekit's masks come from
  torch.bernoulli on the generator `--random-seed` seeds, tensor by tensor in name order and
  model by model, which on CPU is the stream of torch.Generator().manual_seed(seed) and
  rand(shape) < 1 - drop_rate: the masks can match, so the tensors are compared, against ours
  and against `mergekit_dare` below (mergekit's defaults: each dropped task vector rescaled to
  its original L1 norm, not by 1/(1-p); no division by the weights). Statistics too (fraction
  kept, per-tensor rescale), and whether mergekit repeats itself under one seed.

mergekit 0.1.5 needs no architecture file for BitNetForCausalLM: with none in its
`_data/architectures`, it infers one from transformers' BitNetForCausalLM on the meta device
(2 layers, 11 per-layer templates including attn_sub_norm and ffn_sub_norm, 3 loose weights).

`--measure-install DIR` builds a venv there (torch 2.13.0 CPU and this project's transformers,
safetensors, numpy and accelerate, pinned to the versions in this interpreter), then times
`pip install mergekit==0.1.5` under a constraints file that holds torch and transformers, and
uses that venv. Without it the install numbers printed are the ones measured on 2 CPUs with a
warm pip cache for torch but not for mergekit's dependencies (recorded below).
Ends with `RESULT mergekit_install_s=<s> mergekit_install_mb=<mb> max_diff_linear=<x>
max_diff_task_arithmetic=<x> max_diff_ties=<x> ...`.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bitnet.checkpoint import WEIGHTS_FILE, load_checkpoint, save_checkpoint  # noqa: E402
from bitnet.model import BitNetConfig, BitNetLM  # noqa: E402

MERGEKIT_VERSION = "0.1.5"
# Measured for this script's first run: python 3.11 venv with torch 2.13.0+cpu, transformers
# 5.24.0, safetensors, numpy, accelerate (1171 MB), then `pip install mergekit==0.1.5`.
RECORDED_INSTALL_S = 18.7
RECORDED_INSTALL_MB = 430
NOISE = 0.01  # specialists = base + NOISE * N(0, 1), seeded


def build_checkpoints(root: Path) -> dict[str, Path]:
    torch.manual_seed(0)
    config = BitNetConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, intermediate_size=256,
                          max_position_embeddings=64)
    base = BitNetLM(config)
    paths = {"base": save_checkpoint(base, root / "base")}
    for i, name in enumerate(("s1", "s2"), start=1):
        model = BitNetLM(config)
        model.load_state_dict(base.state_dict())
        generator = torch.Generator().manual_seed(100 + i)
        with torch.no_grad():
            for param in model.parameters():
                param.add_(NOISE * torch.randn(param.shape, generator=generator))
        paths[name] = save_checkpoint(model, root / name)
    return paths


def yaml_config(method: str, ckpts: dict[str, Path], models: list[tuple[str, dict]],
                shared: dict | None = None, base: bool = True) -> str:
    """mergekit's YAML (JSON is YAML, so no yaml writer is needed)."""
    config: dict = {"merge_method": method, "dtype": "float32"}
    if base:
        config["base_model"] = str(ckpts["base"])
    config["models"] = [{"model": str(ckpts[name]), "parameters": params}
                        for name, params in models]
    if shared:
        config["parameters"] = shared
    return json.dumps(config, indent=2)


def run_mergekit(mk_bin: Path, text: str, out: Path, seed: int | None = None) -> dict:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    config_file = out.parent / f"{out.name}.yml"
    config_file.write_text(text)
    cmd = [str(mk_bin), str(config_file), str(out), "--no-copy-tokenizer", "--quiet",
           "--no-write-model-card"]
    if seed is not None:
        cmd += ["--random-seed", str(seed)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"mergekit failed on {config_file}:\n{proc.stderr[-3000:]}")
    return load_file(str(out / WEIGHTS_FILE))


def max_diff(a: dict, b: dict) -> float:
    if a.keys() != b.keys():
        raise SystemExit(f"tensor names differ: {sorted(set(a) ^ set(b))[:5]}")
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def worst_tensor(a: dict, b: dict) -> str:
    name = max(a, key=lambda k: (a[k].float() - b[k].float()).abs().max().item())
    return name


def dare_single_stats(merged: dict, base: dict, model: dict) -> dict:
    """One specialist, weight 1, no normalisation: merged - base = mask * c * tau."""
    kept = total = 0
    scales, l1_match = [], 0.0
    for name, b in base.items():
        tau, out = model[name] - b, merged[name] - b
        mask = out != 0
        kept += mask.sum().item()
        total += mask.numel()
        ratio = out[mask] / tau[mask]
        scales.append(ratio.mean().item())
        # mergekit's rescale: the L1 norm of the dropped task vector equals the original's
        l1_match = max(l1_match, abs(out.abs().sum().item() / tau.abs().sum().item() - 1))
    return {"kept": kept / total, "rescale_mean": sum(scales) / len(scales),
            "rescale_min": min(scales), "rescale_max": max(scales), "l1_mismatch": l1_match}


def mergekit_dare(base: dict, models: list[dict], drop_rate: float, seed: int,
                  sign_election: bool) -> dict:
    """mergekit 0.1.5's dare_linear / dare_ties with its defaults (weights 1, lambda 1,
    rescale: true = match each dropped task vector's L1 norm to the original's, normalize:
    false), drawing the masks as mergekit does under --random-seed."""
    generator = torch.Generator().manual_seed(seed)
    merged = {}
    for name, b in base.items():
        deltas = []
        for model in models:
            tau = model[name] - b
            kept = tau * (torch.rand(tau.shape, generator=generator) < 1 - drop_rate)
            before, after = tau.abs().sum(), kept.abs().sum()
            deltas.append(kept if before < 1e-7 or after < 1e-7 else kept * (before / after))
        stacked = torch.stack(deltas)
        if sign_election:
            elected = (stacked.sum(0) >= 0).float() * 2 - 1
            stacked = stacked * (stacked.sign() == elected)
        merged[name] = b + stacked.sum(0)
    return merged


def dare_pair_stats(merged: dict, base: dict) -> dict:
    at_base = total = 0
    l1 = 0.0
    for name, b in base.items():
        out = merged[name] - b
        at_base += (out == 0).sum().item()
        total += out.numel()
        l1 += out.abs().sum().item()
    return {"at_base": at_base / total, "l1": l1}


def measure_install(venv: Path) -> tuple[float, float, Path]:
    pins = {p: importlib.metadata.version(p)
            for p in ("torch", "transformers", "safetensors", "numpy", "accelerate")}
    torch_pin = pins["torch"].split("+")[0]
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run(pip + [f"torch=={torch_pin}"], check=True)
    subprocess.run(pip + [f"{p}=={v}" for p, v in pins.items() if p != "torch"], check=True)
    constraints = venv / "constraints.txt"
    constraints.write_text(f"torch=={torch_pin}\ntransformers=={pins['transformers']}\n")
    before = _du_mb(venv)
    start = time.perf_counter()
    subprocess.run(pip + [f"mergekit=={MERGEKIT_VERSION}", "-c", str(constraints)], check=True)
    seconds = time.perf_counter() - start
    return seconds, _du_mb(venv) - before, venv / "bin" / "python"


def _du_mb(path: Path) -> float:
    out = subprocess.run(["du", "-sm", str(path)], capture_output=True, text=True, check=True)
    return float(out.stdout.split()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mergekit-python", type=Path, default=Path("/tmp/mk/venv/bin/python"),
                        help="an interpreter with mergekit 0.1.5 installed")
    parser.add_argument("--out", type=Path, help="keep checkpoints and merges here")
    parser.add_argument("--measure-install", type=Path, metavar="VENV_DIR",
                        help="build a venv here, time the mergekit install, and use it")
    args = parser.parse_args()

    install_s, install_mb, measured = RECORDED_INSTALL_S, RECORDED_INSTALL_MB, False
    mk_python = args.mergekit_python
    if args.measure_install:
        install_s, install_mb, mk_python = measure_install(args.measure_install)
        measured = True
    mk_bin = mk_python.parent / "mergekit-yaml"
    version = subprocess.run([str(mk_python), "-c",
                              "import importlib.metadata as m; print(m.version('mergekit'), "
                              "m.version('torch'), m.version('transformers'))"],
                             capture_output=True, text=True)
    if version.returncode != 0 or not mk_bin.exists():
        raise SystemExit(f"{mk_python} has no mergekit: install mergekit=={MERGEKIT_VERSION} "
                         "into a separate venv (see --measure-install)")
    print(f"mergekit, torch, transformers in {mk_python}: {version.stdout.strip()}")

    from merge import methods  # the lead's implementation; imported late so --help works

    tmp = None
    if args.out:
        root = args.out
        root.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="mergekit_check_")
        root = Path(tmp.name)
    ckpts = build_checkpoints(root / "ckpts")
    base, s1, s2 = (load_file(str(ckpts[n] / WEIGHTS_FILE)) for n in ("base", "s1", "s2"))
    out = root / "out"

    def w(weight, **extra):
        return {"weight": weight, **extra}

    # name: (mergekit YAML, our merge, group in RESULT)
    exact = {
        "linear": (yaml_config("linear", ckpts, [("s1", w(1.0)), ("s2", w(1.0))], base=False),
                   lambda: methods.linear([s1, s2]), "linear"),
        "linear_weighted": (
            yaml_config("linear", ckpts, [("s1", w(0.7)), ("s2", w(0.3))], base=False),
            lambda: methods.linear([s1, s2], weights=[0.7, 0.3]), "linear"),
        "task_arithmetic": (
            yaml_config("task_arithmetic", ckpts, [("s1", w(1.0)), ("s2", w(1.0))]),
            lambda: methods.task_arithmetic(base, [s1, s2]), "task_arithmetic"),
        "task_arithmetic_weighted": (
            yaml_config("task_arithmetic", ckpts, [("s1", w(0.7)), ("s2", w(0.3))],
                        {"lambda": 0.5}),
            lambda: methods.task_arithmetic(base, [s1, s2], lam=0.5, weights=[0.7, 0.3]),
            "task_arithmetic"),
        "task_arithmetic_normalize": (
            yaml_config("task_arithmetic", ckpts, [("s1", w(0.7)), ("s2", w(0.3))],
                        {"lambda": 0.5, "normalize": True}),
            lambda: methods.task_arithmetic(base, [s1, s2], lam=0.5, weights=[0.7, 0.3]),
            "task_arithmetic_normalize"),
        "ties": (
            yaml_config("ties", ckpts, [("s1", w(1.0, density=0.5)),
                                        ("s2", w(1.0, density=0.5))]),
            lambda: methods.ties(base, [s1, s2], density=0.5), "ties"),
        "ties_weighted": (
            yaml_config("ties", ckpts, [("s1", w(0.7, density=0.3)),
                                        ("s2", w(0.3, density=0.3))], {"lambda": 0.8}),
            lambda: methods.ties(base, [s1, s2], density=0.3, lam=0.8, weights=[0.7, 0.3]),
            "ties"),
    }
    groups: dict[str, float] = {}
    for name, (text, ours_fn, group) in exact.items():
        print(f"\n== {name}: mergekit config\n{text}")
        theirs = run_mergekit(mk_bin, text, out / name)
        ours = ours_fn()
        diff = max_diff(theirs, ours)
        groups[group] = max(groups.get(group, 0.0), diff)
        print(f"{name}: max |mergekit - ours| = {diff:.3g} (worst tensor "
              f"{worst_tensor(theirs, ours)})")

    # DARE. mergekit draws its masks with torch.bernoulli from the global generator that
    # --random-seed seeds, tensor by tensor (in the order of the safetensors names) and model by
    # model (in the config's order); on CPU that is the same stream as
    # torch.Generator().manual_seed(seed) and rand(shape) < 1 - drop_rate. So the masks match
    # and the tensors can be compared; statistics are printed too, since the match rests on
    # torch's and mergekit's internals.
    drop = 0.5
    dare_cases = {
        "dare_linear_single": ("dare_linear", [s1], False,
                               [("s1", w(1.0, density=1 - drop))]),
        "dare_linear": ("dare_linear", [s1, s2], False,
                        [("s1", w(1.0, density=1 - drop)), ("s2", w(1.0, density=1 - drop))]),
        "dare_ties": ("dare_ties", [s1, s2], True,
                      [("s1", w(1.0, density=1 - drop)), ("s2", w(1.0, density=1 - drop))]),
    }
    dare_diff = dare_ref_diff = 0.0
    for name, (method, models, sign, params) in dare_cases.items():
        text = yaml_config(method, ckpts, params)
        print(f"\n== {name} (--random-seed 0): mergekit config\n{text}")
        theirs = run_mergekit(mk_bin, text, out / name, seed=0)
        ours = methods.dare(base, models, drop_rate=drop, seed=0, sign_election=sign)
        ref = mergekit_dare(base, models, drop_rate=drop, seed=0, sign_election=sign)
        diff, ref_diff = max_diff(theirs, ours), max_diff(theirs, ref)
        dare_diff, dare_ref_diff = max(dare_diff, diff), max(dare_ref_diff, ref_diff)
        print(f"{name}: max |mergekit - ours| = {diff:.3g}; max |mergekit - mergekit_dare "
              f"(L1 rescale, no normalisation, same masks)| = {ref_diff:.3g}")
        if len(models) == 1:
            again = run_mergekit(mk_bin, text, out / f"{name}_again", seed=0)
            print(f"mergekit repeats with --random-seed 0: {max_diff(theirs, again) == 0}")
            theirs_stats = dare_single_stats(theirs, base, s1)
            ours_stats = dare_single_stats(ours, base, s1)
            for who, st in (("mergekit", theirs_stats), ("ours", ours_stats)):
                print(f"{who:8s} kept {st['kept']:.4f} (expected {1 - drop}), rescale of kept "
                      f"per tensor mean {st['rescale_mean']:.4f} [{st['rescale_min']:.4f}, "
                      f"{st['rescale_max']:.4f}] (1/(1-p) = {1 / (1 - drop):.4f}), "
                      f"max |L1(dropped)/L1(tau) - 1| {st['l1_mismatch']:.2e}")
        else:
            t, o = dare_pair_stats(theirs, base), dare_pair_stats(ours, base)
            print(f"{name}: elements left at base: mergekit {t['at_base']:.4f}, ours "
                  f"{o['at_base']:.4f}; L1(merged - base) mergekit/ours {t['l1'] / o['l1']:.3f}")

    merged_dir = out / "ties"
    model = load_checkpoint(merged_dir)  # mergekit's output loads as our checkpoint
    print(f"\nmergekit's output loads with bitnet.checkpoint.load_checkpoint: "
          f"{type(model).__name__}; its config.json keeps magnet = "
          f"{json.loads((merged_dir / 'config.json').read_text()).get('magnet')}")
    print(f"install ({'measured now' if measured else 'recorded'}): {install_s:.1f} s, "
          f"+{install_mb:.0f} MB")
    print(f"RESULT mergekit_install_s={install_s:.1f} mergekit_install_mb={install_mb:.0f} "
          f"max_diff_linear={groups['linear']:.3g} "
          f"max_diff_task_arithmetic={groups['task_arithmetic']:.3g} "
          f"max_diff_ties={groups['ties']:.3g} "
          f"max_diff_task_arithmetic_normalize={groups['task_arithmetic_normalize']:.3g} "
          f"max_diff_dare={dare_diff:.3g} max_diff_dare_reference={dare_ref_diff:.3g} "
          f"dare_kept_mergekit={theirs_stats['kept']:.3f} dare_kept_ours={ours_stats['kept']:.3f} "
          f"dare_rescale_mergekit={theirs_stats['rescale_mean']:.3f} "
          f"dare_rescale_ours={ours_stats['rescale_mean']:.3f}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()

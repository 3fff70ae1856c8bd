"""The few-shot benchmark on MotionWorld: learning motions from a few clips, composing them, ablating the parts.

    python benchmarks/motion_world/fewshot.py                       # every row (hours on 2 CPU cores)
    python benchmarks/motion_world/fewshot.py --rows fewshot compose  # groups (or row ids) to run
    python benchmarks/motion_world/fewshot.py --table                 # print the table of the cached rows
    python benchmarks/motion_world/fewshot.py --base wan              # the Wan rows on miva-world-wan (--rows, --table too)

`--base` picks the MotionWorld base (docs/motionworld.md#two-bases): ``unet`` (the default, miva-world) or ``wan``
(miva-world-wan). Everything per base comes from one place: the pipeline (`miva.world.load_pipeline(base=...)`),
its sampling (`miva.world.evaluate.sampling_defaults`), the recipe (`miva.world.adapters.RECIPES`, trained with
``world=base``), the cache folder (`base_fingerprint(base=...)`) and the shipped adapters that may serve a row
(`shipped_recipes(base)`, `shipped_adapters(base)`). Row ids are the same strings on both bases. The Wan row set
(`WAN_ROWS`) keeps the rows that apply to the DiT: references, base and 10 clips for right / zoom_in / rotate_cw,
clips/right/{1,3}, sweep/right/{0.0,0.5,1.0,1.5}, compose/right+down/{residual_0.5,weights_1} and the ablations of
the Wan recipe (`WAN_VARIANTS`: cross-frame "first" instead of "first_prev", no implicit prompt, no MotionLoRA).
Left out as UNet-only: spatiotemporal Q, CA-LoRA (refused beside the implicit prompt), the orthogonal bases library
on the UNet and AdaIN (MIVAWanPipeline has none); the seed and budget rows wait for the Wan recipe's first numbers.

Each adapter is trained with miva's own trainer (`miva.training.train.train`, what `miva train --config` runs) on
MotionWorld clips written by `miva.world.adapters`, and every row animates the same held-out scenes (never seen in
training) with `MIVAPipeline` and scores them with `miva.world.metrics`. Results are cached per row (and trained
adapters per recipe, seed and step budget) under `--cache/base-<fingerprint>` (`miva.world.base_fingerprint`), rows
in a folder named after the world's default sampling and any settings that differ from the defaults, so a cut-off
run continues where it stopped and results of another base, sampling or smoke run are never mixed in. Cached
adapters keep the `train_config.yaml` they were trained with and cached rows the recipe fingerprints of their
adapters (`miva.world.adapters.recipe_fingerprint`): when a recipe changes, what it touches is trained and measured
again. A shipped adapter whose `train_config.yaml` is a row's recipe, on the same base, serves that row instead of
a second training.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(HERE))  # fewshot_rows beside this file, however this file is loaded

from fewshot_rows import (  # noqa: E402, F401  (the rows, data only; re-exported for the tests)
    BASE_ROWS,
    BASE_VARIANTS,
    ROWS,
    VARIANTS,
    WAN_ROWS,
    WAN_VARIANTS,
    AdapterSpec,
    Row,
)

from miva.world import WORLD_BASES, base_fingerprint, shipped_adapters  # noqa: E402
from miva.world.adapters import (  # noqa: E402
    RECIPES,
    saved_recipe_fingerprint,
    shipped_recipes,
    train_world_adapter,
    world_recipe_fingerprint,
)
from miva.world.evaluate import HELDOUT_SCENES, sampling_defaults  # noqa: E402
from miva.world.motions import get_motion  # noqa: E402


def _bases_library(cache: Path) -> Path:
    """The orthogonal bases library of the MotionWorld UNet (seed 0), made once."""
    path = cache / "oa_bases.safetensors"
    if not path.is_file():
        from miva.training.orthogonal import create_bases_library
        from miva.world import load_pipeline

        create_bases_library(load_pipeline().unet, str(path), seed=0)
    return path


def _recipe(spec: AdapterSpec, steps: int, cache: Path) -> dict:
    """The :func:`~miva.world.adapters.train_world_adapter` arguments that train ``spec`` for ``steps``."""
    extra = None
    if spec.oa_bin is not None:
        extra = {"oa_bin_id": spec.oa_bin, "oa_bases_path": str(cache / "oa_bases.safetensors")}
    # the variant goes over the base's parts (WORLD_PARTS / WAN_PARTS) in world_train_config
    return {"num_clips": spec.clips, "adapter": BASE_VARIANTS[spec.base][spec.variant], "steps": steps,
            "seed": spec.seed, "extra": extra, "world": spec.base}


def spec_fingerprint(spec: AdapterSpec, steps: int, cache: Path) -> str:
    """:func:`~miva.world.adapters.recipe_fingerprint` of ``spec`` trained for ``steps``: what a cached or shipped
    adapter's ``train_config.yaml`` must match to stand for it (a changed `WORLD_PARTS` or variant retrains)."""
    return world_recipe_fingerprint(**_recipe(spec, steps, cache))


def _shipped_equivalent(spec: AdapterSpec, steps: int, cache: Path) -> tuple[Path, dict] | None:
    """The shipped adapter trained with ``spec``'s recipe (its ``train_config.yaml``), motion and clips on the
    spec's base (`shipped_recipes(spec.base)` in `shipped_adapters(spec.base)`), if any."""
    folders = shipped_adapters(spec.base)
    for name, shipped in shipped_recipes(spec.base).items():
        folder = folders.get(name)
        if shipped.motion != spec.motion or folder is None or not (folder / "training.json").is_file():
            continue
        record = json.loads((folder / "training.json").read_text())
        if record.get("clips") != spec.clips or record.get("base") != base_fingerprint(base=spec.base):
            continue
        if saved_recipe_fingerprint(folder) != spec_fingerprint(spec, steps, cache):
            continue
        size = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
        return folder, {"seconds": record["seconds"], "steps": steps, "clips": spec.clips, "bytes": size}
    return None


def trained_adapter(spec: AdapterSpec, cache: Path, steps: int, log=print) -> tuple[Path, dict]:
    """The native adapter folder of ``spec`` (trained now unless cached or shipped) and its training record.
    ``steps`` is the run's budget, used unless ``spec`` sets its own. A cached adapter serves only if the
    ``train_config.yaml`` kept with it is ``spec``'s recipe."""
    steps = spec.steps or steps
    shipped = _shipped_equivalent(spec, steps, cache)
    if shipped is not None:
        return shipped
    key = spec.key(steps)
    folder = cache / "adapters" / key
    record_path = folder / "training.json"
    if record_path.is_file():
        if saved_recipe_fingerprint(folder) == spec_fingerprint(spec, steps, cache):
            return folder / "adapter", json.loads(record_path.read_text())
        log(f"cached adapter {key} was trained with another recipe: training it again")
    if spec.oa_bin is not None:
        _bases_library(cache)
    work = cache / "work" / key
    shutil.rmtree(work, ignore_errors=True)
    result = train_world_adapter(spec.motion, work, adapter_name=key.replace("-", "_").replace(".", "_"), log=log,
                                 **_recipe(spec, steps, cache))
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(result["adapter"], tmp / "adapter")
    shutil.copy2(work / "train_config.yaml", tmp / "train_config.yaml")
    size = sum(p.stat().st_size for p in (tmp / "adapter").glob("*.safetensors"))
    record = {"seconds": result["seconds"], "steps": steps, "clips": spec.clips, "seed": spec.seed, "bytes": size}
    (tmp / "training.json").write_text(json.dumps(record, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    shutil.rmtree(work, ignore_errors=True)
    return folder / "adapter", record


def _row_specs(row: Row, max_clips: int | None) -> list[AdapterSpec]:
    return [replace(spec, clips=min(spec.clips, max_clips or spec.clips)) for spec in row.adapters]


def row_recipes(row: Row, cache: Path, *, steps: int, max_clips: int | None = None) -> list[str]:
    """``<cache key>@<recipe fingerprint>`` of each adapter of ``row``: a cached row whose record differs (a recipe
    or variant changed since) is measured again."""
    return [f"{spec.key(spec.steps or steps)}@{spec_fingerprint(spec, spec.steps or steps, cache)}"
            for spec in _row_specs(row, max_clips)]


def run_row(row: Row, cache: Path, *, steps: int, scenes: int, eval_steps: int, max_clips: int | None = None,
            log=print, base: str = "unet") -> dict:
    from miva.world import load_pipeline
    from miva.world.evaluate import evaluate_pipeline

    start = time.perf_counter()
    specs = _row_specs(row, max_clips)
    trained = [trained_adapter(spec, cache, steps, log) for spec in specs]
    pipe = load_pipeline(base=base)
    pipe.set_progress_bar_config(disable=True)
    call = {"num_inference_steps": eval_steps, **dict(row.sampling)}
    if trained:
        names = [f"a{i}" for i in range(len(trained))]
        pipe.load_adapters([str(path) for path, _ in trained], adapter_names=names,
                           weights=list(row.weights) if row.weights else None, parallel_mode=row.mode)
        if row.fuse:
            pipe.fuse_adapters()
    target = get_motion(row.target).scaled(row.target_scale)
    prompts = len(trained) if row.per_adapter_prompts else 0
    result = evaluate_pipeline(pipe, target, scenes=scenes, adapter_prompts=prompts, reference=row.reference, **call)
    summary = {k: v for k, v in result.items() if k != "rows"}
    summary["train_seconds"] = sum(r["seconds"] for _, r in trained) or None
    summary["adapter_bytes"] = sum(r["bytes"] for _, r in trained) or None
    summary["row_seconds"] = time.perf_counter() - start
    sampling = None if row.reference else {**sampling_defaults(base), **call}
    return {"row": row.id, "base": base, "target": target.describe(), "sampling": sampling, "summary": summary,
            "recipes": row_recipes(row, cache, steps=steps, max_clips=max_clips), "videos": result["rows"]}


def default_settings(base: str = "unet") -> dict:
    """The run's settings unless told otherwise, on MotionWorld ``base``: its recipe's steps and sampling's."""
    return {"steps": RECIPES[base]["steps"], "scenes": HELDOUT_SCENES,
            "eval_steps": sampling_defaults(base)["num_inference_steps"], "max_clips": None}


DEFAULT_SETTINGS = default_settings()


def sampling_mark(sampling: dict | None = None, base: str = "unet") -> str:
    """A short fingerprint of the world's default sampling on ``base`` (:func:`~miva.world.evaluate.sampling_defaults`)."""
    text = json.dumps(sampling_defaults(base) if sampling is None else sampling, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _rows_folder(settings: dict, base: str = "unet") -> str:
    """``rows-<sampling mark>``, followed by the settings that differ from the defaults: rows sampled another way
    (the world's default changed) or measured under other settings (a smoke run's 2 scenes) are never mixed into
    the table."""
    defaults = default_settings(base)
    changed = [f"{name}{value}" for name, value in settings.items() if value != defaults[name]]
    return "-".join(["rows", sampling_mark(base=base), *changed])


def _fmt(value, pattern="{:.2f}") -> str:
    return "n/a" if value is None else pattern.format(value)


def table(results: list[dict]) -> str:
    lines = [
        "| base | row | target | class acc. | dir. err (deg) | mean dir (deg) | speed (px/f) | along target (px/f) | zoom err "
        "| turn err (deg/f) | PSNR | SSIM | train s | adapter KB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        s = r["summary"]
        lines.append(
            f"| {r.get('base', 'unet')} | {r['row']} | {r['target']} | {_fmt(s['class_accuracy'], '{:.0%}')} | {_fmt(s['direction_error'], '{:.1f}')}"
            f" | {_fmt(s['direction_spread']['mean'], '{:.0f}')} | {_fmt(s['speed'])}"
            f" | {_fmt(s.get('drift_along_target'))}"  # rows cached before the field existed: n/a
            f" | {_fmt(s['zoom_error'], '{:.4f}')} | {_fmt(s['turn_error'])} | {_fmt(s['psnr'])}"
            f" | {_fmt(s['ssim'], '{:.3f}')} | {_fmt(s['train_seconds'], '{:.0f}')}"
            f" | {_fmt(s['adapter_bytes'] and s['adapter_bytes'] / 1024, '{:.0f}')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", nargs="*", default=[], help="row ids or id prefixes (groups); default: all")
    parser.add_argument("--cache", default=str(HERE / "cache"), help="per-row results and trained adapters")
    parser.add_argument("--base", choices=sorted(WORLD_BASES), default="unet",
                        help="the MotionWorld base: unet (miva-world, default) or wan (miva-world-wan)")
    parser.add_argument("--steps", type=int, help="adapter training steps (default: the base's recipe)")
    parser.add_argument("--scenes", type=int, default=HELDOUT_SCENES, help="held-out scenes per row")
    parser.add_argument("--eval-steps", type=int, help="denoising steps per video (default: the base's sampling)")
    parser.add_argument("--max-clips", type=int, help="cap the clips per adapter (smoke runs)")
    parser.add_argument("--table", action="store_true", help="only print the table of the cached rows")
    args = parser.parse_args(argv)
    base, defaults = args.base, default_settings(args.base)
    args.steps = defaults["steps"] if args.steps is None else args.steps
    args.eval_steps = defaults["eval_steps"] if args.eval_steps is None else args.eval_steps
    cache = Path(args.cache) / f"base-{base_fingerprint(base=base)}"
    settings = {"steps": args.steps, "scenes": args.scenes, "eval_steps": args.eval_steps, "max_clips": args.max_clips}
    rows_dir = cache / _rows_folder(settings, base)
    rows = BASE_ROWS[base]
    chosen = [r for r in rows if not args.rows or any(r.id.startswith(prefix) for prefix in args.rows)]
    if not chosen:
        parser.error(f"--rows {args.rows} match no {base} row; rows: {', '.join(r.id for r in rows)}")
    results = []
    for row in chosen:
        path = rows_dir / (row.id.replace("/", "__") + ".json")
        if path.is_file():
            cached = json.loads(path.read_text())
            if cached.get("recipes") == row_recipes(row, cache, steps=args.steps, max_clips=args.max_clips):
                results.append(cached)
                continue
            print(f"{row.id}: cached with other adapter recipes ({cached.get('recipes')}), measured again",
                  file=sys.stderr)
        if args.table:
            continue
        print(f"== {row.id}", flush=True)
        result = run_row(row, cache, steps=args.steps, scenes=args.scenes, eval_steps=args.eval_steps,
                         max_clips=args.max_clips, base=base)
        result["settings"] = settings
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_suffix(".tmp").write_text(json.dumps(result, indent=2))
        path.with_suffix(".tmp").rename(path)
        results.append(result)
        print(table([result]).splitlines()[-1], flush=True)
    print(table(results))
    return results


if __name__ == "__main__":
    main()

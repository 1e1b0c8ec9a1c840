"""Evidence for the audit's defaults, on real data: CIFAR-10 JPEGs and the four public CIFAR ResNets.

    make study                                   # = .venv/bin/python bench/study.py
    .venv/bin/python bench/study.py --quick      # smoke run (~1-2 min), writes out/study-quick/science.md

Writes ``docs/science.md`` and its figures under ``docs/science/`` (``--out`` to write elsewhere), one module of
``bench/sections/`` a section:

1-4. ``main_run``: per-image dominance against logit and softmax (Fig. 3) at both mosaic scales, training share by
     dominance rank (Fig. 4/5), stability across mosaic-sampling seeds, a planted shift; ``figures`` draws them;
5.   ``nongap`` (``--only nongap``): models where Grad-CAM is not the CAM (``trained`` trains them);
6.   ``heldout`` (``--only heldout``): held-out halves;
7.   ``methods`` (``--only methods``): attribution methods and randomized controls;
8.   ``doc``: the defaults and the evidence for them, the page, ``science/study.json``, and splicing 5-7 into both.

Every number comes from the audit's own stage functions (``open_audit``, ``audit_class``,
``per_image_result``, ``summarize``); this script only chooses the subsets, seeds and scales.
Needs ``../shared/data`` (see its README); exits with a message when it is absent.
"""

from __future__ import annotations

import argparse
import pickle
import shlex
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: bench/ is a package
from bench.sections.doc import render, section_main  # noqa: E402
from bench.sections.main_run import Plan, run  # noqa: E402  (Plan: the pickles of --save-runs name __main__.Plan)
from bench.sections.nongap import nongap_main  # noqa: E402
from bench.sections.trained import CACHE  # noqa: E402
from bench.shared import ROOT, SHARED, WEIGHTS, Clock, environment, say  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: one model, a few classes, small J (~1-2 min)")
    ap.add_argument("--data", default=str(SHARED), help="the shared data folder (default ../shared/data, or "
                                                        "$XICH_SHARED_DATA)")
    ap.add_argument("--out", help="folder for science.md and science/ (default docs/, or out/study-quick with --quick)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a 2-core machine shared with other work, 2 threads "
                         "measured 2-5x slower than 1)")
    ap.add_argument("--save-runs", metavar="FILE", help="also pickle the raw results (for --render-from)")
    ap.add_argument("--render-from", metavar="FILE",
                    help="write the page and figures from a --save-runs file, without recomputing anything")
    ap.add_argument("--only", choices=["nongap", "heldout", "methods"],
                    help="run one section and splice it into science.md and study.json (nongap: models where "
                         "Grad-CAM is not the CAM, trained first by bench/study_models.py if not cached; heldout: "
                         "held-out halves; methods: attribution methods and randomized controls; see "
                         "bench/sections/)")
    ap.add_argument("--nongap-models", help="with --only nongap: these specs only (comma-separated), the others' "
                                            "records in study.json kept")
    ap.add_argument("--methods-models", help="with --only methods: these models only (comma-separated, e.g. "
                                             "resnet20-flat), the others' records in study.json kept")
    ap.add_argument("--heldout-models", help="with --only heldout: these models only (comma-separated, e.g. "
                                             "resnet20-flat), the others' records in study.json kept")
    ap.add_argument("--rerender", action="store_true",
                    help="with --only heldout or methods: rewrite that section of science.md from study.json's "
                         "records, computing nothing")
    ap.add_argument("--vit-seconds", type=float, default=720, help="wall-time bound for training the study's ViT")
    args = ap.parse_args()
    if args.render_from and not args.only:
        with open(args.render_from, "rb") as f:
            saved = pickle.load(f)
        out = Path(args.out) if args.out else ROOT / ("out/study-quick" if saved["quick"] else "docs")
        render(out, saved["plan"], saved["runs"], Clock(saved["spent"], saved["total"]), saved["command"],
               saved["quick"], saved["env"], rendered_by=environment().split(";")[0].removeprefix("code "))
        print(f"wrote {out / 'science.md'} from {args.render_from}")
        return 0
    out = Path(args.out) if args.out else ROOT / ("out/study-quick" if args.quick else "docs")
    torch.set_num_threads(args.threads)
    if args.only:
        cache = CACHE / "quick" if args.quick else CACHE  # the quick run's models are not the study's
        command = "python bench/study.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        section = nongap_main if args.only == "nongap" else section_main
        return section(args, Path(args.data), out, cache, command)
    data = Path(args.data)
    needed = [data / "cifar10-jpeg" / "test.tar.gz", data / "cifar10-jpeg" / "train.tar.gz"] + [
        data / "cifar-resnet" / w for w in WEIGHTS.values()]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        print(f"skipped: the study needs the shared data ({', '.join(missing)} absent); see ../shared/data/README.md")
        return 0
    plan = Plan.quick() if args.quick else Plan.full()
    command = "make study" if not args.quick and not args.out and args.threads == 1 else (
        "python bench/study.py " + " ".join(shlex.quote(a) for a in sys.argv[1:] if a != "--save-runs"
                                            and not a.endswith(".pkl"))).strip()
    env = environment()
    clock = Clock()
    say(clock, f"study ({'quick' if args.quick else 'full'}): models {', '.join(plan.models)}; writing {out}/science.md")
    runs = run(data, plan, clock)
    if args.save_runs:
        with open(args.save_runs, "wb") as f:
            pickle.dump({"plan": plan, "runs": runs, "spent": dict(clock.spent), "total": clock.total(),
                         "command": command, "quick": args.quick, "env": env}, f)
    render(out, plan, runs, clock, command, args.quick, env)
    say(clock, f"wrote {out / 'science.md'} and {out / 'science'}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())

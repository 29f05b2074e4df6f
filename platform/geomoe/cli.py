"""``geomoe``: run jobs, sweeps and Serve apps for cross-modal geo-localization on Ray, locally or on a cluster.

Thin: parse, load a spec, call the library; a user-fixable problem (a GeomoeError) is one line on stderr and
exit code 2."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from geomoe.errors import GeomoeError

DESCRIPTION = "Cross-modal geo-localization with mixture-of-experts models, on Ray: jobs, sweeps, serving."
EPILOG = "geomoe COMMAND --help tells more; README.md has a how-do-I for each use."


def _cmd_run(args: argparse.Namespace) -> None:
    from geomoe.config import load_job
    from geomoe.jobs import run_dir_of, run_job_timed, time_table
    from geomoe.logs import run_logs
    from geomoe.progress import Progress
    from geomoe.report import caption_summary, manifest_summary, refine_summary

    spec = load_job(args.job, args.set)
    if not args.verbose:
        _quiet_libraries()
    try:
        with run_logs(run_dir_of(spec), args.verbose, _ray_session_logs) as logs:
            timed = run_job_timed(spec, Progress(spec.stages))
    except GeomoeError:
        raise
    except BaseException:
        if not args.verbose:
            tail = "\n".join(f"  {line}" for line in logs.last_lines)
            print(f"geomoe: the job failed; last log lines:\n{tail}\nlogs: {logs.location}", file=sys.stderr)
        raise
    results = timed.outputs
    if "synth" in results:
        print("synthgeo:", json.dumps(results["synth"]))
    if "prepare" in results:
        print(manifest_summary(results["prepare"]))
    if "refine" in results:
        print(refine_summary(results["refine"]))
    if "caption" in results:
        print(caption_summary(results["caption"]))
    if "train" in results:
        from geomoe.jobs import train_report

        print(train_report(spec, results["train"]))
    if "index" in results:
        from geomoe.report import index_summary

        print(index_summary(results["index"]))
    if "registered" in results:
        print(f"registered: {results['registered']} (serve it with checkpoint: {results['registered']})")
    print(time_table(timed.seconds))


def _quiet_libraries() -> None:
    """Hugging Face's download and shard-writing bars off (the job's own bars say what runs)."""
    import os

    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # read at import, here and in Ray's workers
    if "huggingface_hub" in sys.modules:
        sys.modules["huggingface_hub"].utils.disable_progress_bars()


def _ray_session_logs() -> Path | None:
    if "ray" not in sys.modules:  # the job failed before Ray started: no session to copy
        return None
    from geomoe.ray_env import session_logs

    return session_logs()


def _cmd_synth(args: argparse.Namespace) -> None:
    from geomoe.config import SynthSpec, parse_spec
    from geomoe.data.synthgeo import generate

    spec = parse_spec(SynthSpec, {}, "--set", args.set)
    print(json.dumps(generate(args.out, spec, force=args.force), indent=2))


def _cmd_prepare(args: argparse.Namespace) -> None:
    from geomoe.config import load_job
    from geomoe.pipelines.prepare import prepare
    from geomoe.report import manifest_summary

    print(manifest_summary(prepare(load_job(args.job, args.set))))


def _cmd_sweep(args: argparse.Namespace) -> None:
    if args.dry_run:
        print(_dry_run(args.sweep, args.quickstart))
        return
    from geomoe.sweep.report import write_report
    from geomoe.sweep.tune import run_sweep

    print(write_report(run_sweep(args.sweep, args.quickstart, args.resume)))


def _dry_run(path: str, quickstart: bool) -> str:
    """Each trial's key, training data and overrides, without starting Ray or touching any data."""

    from geomoe.sweep import describe_trials, experiment_location, load_sweep

    sweep, base_path = load_sweep(path, quickstart)
    root = Path.cwd().resolve()
    experiment = experiment_location(sweep, root)
    lines = [f"sweep {sweep.name}: base {base_path}, experiment {experiment}"]
    for row in describe_trials(sweep, base_path, experiment, root):
        lines.append(f"- trial {row['trial']}  {row['params'] or ''}".rstrip())
        if "error" in row:
            lines.append(f"    not a valid job: {row['error']}")
            continue
        lines.append(f"    trains on: {row['data']} at {row['dataset']}")
        lines.append(f"    overrides: {' '.join(row['overrides']) or '(none)'}")
    return "\n".join(lines)


def _cmd_report(args: argparse.Namespace) -> None:
    from geomoe import storage
    from geomoe.sweep.report import write_report

    print(write_report(storage.absolute(args.experiment)))


def _cmd_serve(args: argparse.Namespace) -> None:
    import os
    import shutil

    from geomoe.serving.config import check_serve_config

    for line in check_serve_config(args.config):
        print(line)
    command = ["serve", "run", args.config] + (["--address", args.address] if args.address else [])
    executable = shutil.which("serve") or str(Path(sys.executable).with_name("serve"))
    sys.stdout.flush()
    os.execv(executable, command)  # Serve's own runner: it blocks, and Ctrl-C shuts the applications down


def _cmd_submit(args: argparse.Namespace) -> None:
    from geomoe.remote import submit

    result = submit(args.job, args.address, args.set, args.working_dir, args.wait)
    print(result.pop("logs", ""), end="")
    print(json.dumps(result))
    if args.wait and result["status"] != "SUCCEEDED":
        raise SystemExit(1)


def _cmd_k8s(args: argparse.Namespace) -> None:
    from geomoe import k8s
    from geomoe.errors import SpecError

    if args.kind != "cluster" and not args.source:
        raise SpecError(
            f"geomoe k8s {args.kind}", "source", "name the spec, e.g. geomoe k8s job jobs/pe_moe_geotext.yaml"
        )
    values = k8s.load_values(args.values)
    if args.kind == "job":
        manifest = k8s.ray_job(args.source, values, args.set)
    elif args.kind == "service":
        manifest = k8s.ray_service(args.source, values)
    else:
        manifest = k8s.ray_cluster(values)
    text = k8s.to_yaml(manifest)
    if args.out:
        from geomoe import storage

        storage.write_text_atomic(args.out, text)
        print(f"{manifest['kind']} {manifest['metadata']['name']} -> {args.out} (kubectl apply -f {args.out})")
    else:
        print(text, end="")


def _cmd_convert(args: argparse.Namespace) -> None:
    from geomoe.models.checkpoint import convert_pickled

    print(f"converted: {convert_pickled(args.checkpoint, args.out).parent}")


def _cmd_bench(args: argparse.Namespace) -> None:
    from geomoe.bench import run_benchmark

    run_benchmark(args.name, args.out, args.set)


def _convert_parser(sub: Any) -> None:
    convert = sub.add_parser("convert", help="convert an old pickled checkpoint (state.pt) to safetensors")
    convert.add_argument("checkpoint", help="the checkpoint folder (a local path)")
    convert.add_argument("--out", help="write the converted checkpoint here (default: beside state.pt)")
    convert.set_defaults(fn=_cmd_convert)


def _k8s_parser(sub: Any) -> Any:
    kube = sub.add_parser("k8s", help="KubeRay manifest: RayJob, RayService or RayCluster")
    kube.add_argument("kind", choices=["job", "service", "cluster"])
    kube.add_argument("source", nargs="?", help="jobs/*.yaml for a job, serve/*.yaml for a service")
    kube.add_argument("--values", default="k8s/values.yaml", help="image, pod shapes, storage (default: %(default)s)")
    kube.add_argument("--out", help="write here instead of printing")
    kube.set_defaults(fn=_cmd_k8s)
    return kube


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="geomoe", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("-v", "--verbose", action="store_true", help="every log line on the console")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run a job (jobs/*.yaml) on Ray, local or joined")
    run.add_argument("job")
    run.add_argument(  # also after the command; without it Ray's logs go to <run>/logs
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="show every log line as it comes"
    )
    run.set_defaults(fn=_cmd_run)
    synth = sub.add_parser("synth", help="write the synthetic benchmark in the real layouts")
    synth.add_argument("--out", required=True)
    synth.add_argument("--force", action="store_true", help="regenerate even if OUT holds the same benchmark")
    synth.set_defaults(fn=_cmd_synth)
    prep = sub.add_parser("prepare", help="run only the prepare stage of a job")
    prep.add_argument("job")
    prep.set_defaults(fn=_cmd_prepare)
    sweep = sub.add_parser("sweep", help="run a sweep (search_spaces/*.yaml) on Ray Tune")
    sweep.add_argument("sweep")
    sweep.add_argument("--quickstart", action="store_true", help="the sweep's 2-core variant (synthgeo, tiny models)")
    sweep.add_argument("--resume", action="store_true", help="continue an interrupted sweep; finished trials stay")
    sweep.add_argument("--dry-run", action="store_true", help="print each trial's data and overrides; run nothing")
    sweep.set_defaults(fn=_cmd_sweep)
    report = sub.add_parser("report", help="a sweep's report, next to the paper's numbers")
    report.add_argument("experiment", help="the sweep's folder, e.g. runs/sweeps/smgeo_experts-quickstart")
    report.set_defaults(fn=_cmd_report)
    submit = sub.add_parser("submit", help="run a job on a remote Ray cluster (Ray Jobs)")
    submit.add_argument("job", help="job spec, relative to --working-dir")
    submit.add_argument("--address", required=True, help="the cluster's dashboard, e.g. http://head:8265")
    submit.add_argument("--working-dir", default=".", help="uploaded with the job (data/ and runs/ excluded)")
    submit.add_argument("--wait", action="store_true", help="follow the job to the end and print its logs")
    submit.set_defaults(fn=_cmd_submit)
    serve = sub.add_parser("serve", help="check and run a Serve config (serve/*.yaml)")
    serve.add_argument("config")
    serve.add_argument("--address", help="a running Ray cluster (default: start a local one)")
    serve.set_defaults(fn=_cmd_serve)
    kube = _k8s_parser(sub)
    _convert_parser(sub)
    bench = sub.add_parser("bench", help="run a benchmark; writes JSON and one summary line")
    bench.add_argument(
        "name",
        choices=[
            "prepare",
            "pe_moe_step",
            "mining",
            "gmoe",
            "rerank",
            "sweep",
            "index",
            "serve",
            "storage",
            "gpu",
        ],
    )
    bench.add_argument("--out", default="bench_results")
    bench.set_defaults(fn=_cmd_bench)
    for command in (run, synth, prep, bench, submit, kube):
        command.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a spec key")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        args.fn(args)
    except GeomoeError as err:
        print(f"geomoe: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

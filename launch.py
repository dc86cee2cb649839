"""Command line: python launch.py --config=configs/NAME.py[:preset] --workdir=DIR [--config.KEY=VALUE ...]

Modes: train (default; resumes when WORKDIR has a checkpoint), evaluate (the newest checkpoint, or --step=N|best,
on the test split), predict (--input=PATH: class probabilities; --step too), report (a sweep's results table).
--sweep runs a config's get_sweep().
Multi-host: --coordinator=HOST:PORT --num_processes=N --process_id=I on each process (or PTFT_COORDINATOR,
PTFT_NUM_PROCESSES, PTFT_PROCESS_ID), checked before jax is imported. Each process says what it waits for and stops
with one sentence (exit 2) when the processes have not all connected within --init_timeout seconds (PTFT_INIT_TIMEOUT,
300 by default). A multi-process train or evaluate runs as a child of this process (ptft_jax/multihost.py says why):
when a process is lost, the others stop with one sentence naming it and the checkpoint that a restart of all
processes resumes from, exit status 75, the runtime's messages in WORKDIR/crash-PID.log.
"""
import os
import sys

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string("config", None, "Recipe file, optionally with a preset: configs/NAME.py[:preset].")
flags.DEFINE_string("workdir", None, "Run directory: config.json, checkpoints/, metrics.jsonl.")
flags.DEFINE_enum("mode", "train", ["train", "evaluate", "predict", "report"], "What to do; report: a sweep's table.")
flags.DEFINE_bool("sweep", False, "Run every member of the config file's get_sweep() in WORKDIR/<member>.")
flags.DEFINE_bool("sweep_print", False, "Print one launch command per sweep member instead of running them.")
flags.DEFINE_string("input", None, "predict: an .npy (memory-mapped) or .npz (array x) of images, uint8 0-255 "
                    "or float 0-1 (other values are refused), [N,H,W,C] or [N,H,W]; an image file; or a folder of "
                    "images (recursive; each line names its file); for a text classifier a text file, one text a "
                    "line, or a .jsonl of {\"text\"[, \"text_b\"]}.")
flags.DEFINE_string("step", None, "evaluate / predict: which checkpoint, a step or 'best' (train.keep_best's); "
                    "default: the newest that restores.")
flags.DEFINE_bool("allow_config_change", False, "Resume a workdir whose run had a different config.")
flags.DEFINE_string("coordinator", None, "Multi-host: address of process 0, e.g. 10.0.0.1:1234.")
flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.")
flags.DEFINE_integer("init_timeout", None, "Multi-host: seconds the processes may take to connect (default 300).")


def parse_flags(argv):
    """absl's flags, plus the --config.KEY=VALUE overrides absl does not know: (the rest of argv, overrides)."""
    overrides = [a[len("--config."):] for a in argv if a.startswith("--config.")]
    return app.parse_flags_with_usage([a for a in argv if not a.startswith("--config.")]), overrides


def main(parsed):
    argv, overrides = parsed
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    if not any(a.startswith(("--verbosity", "-v")) for a in sys.argv):
        logging.set_verbosity(logging.WARNING)  # Orbax and grain log every save at INFO
    import ptft_jax
    from ptft_jax import multihost

    try:
        cluster = multihost.cluster_from(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id, FLAGS.init_timeout)
        if os.environ.get(multihost.SUPERVISOR_ENV):
            multihost.child_setup()
        elif cluster and FLAGS.mode in ("train", "evaluate") and not FLAGS.sweep_print:
            sys.exit(multihost.supervise([sys.executable, *sys.orig_argv[1:]], cluster, FLAGS.workdir))
        _run(ptft_jax, overrides, cluster)
    except ptft_jax.Interrupted as e:
        print(f"stopped: {e}", file=sys.stderr)
        sys.exit(128 + e.signum)
    except ptft_jax.UserError as e:
        logging.debug("user error", exc_info=True)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def _run(ptft_jax, overrides, cluster):
    if FLAGS.mode == "predict":
        if not FLAGS.workdir or not FLAGS.input:
            raise ptft_jax.ConfigError("--mode=predict needs --workdir=RUN and --input=PATH.")
        from ptft_jax.predict import print_jsonl
        print_jsonl(FLAGS.workdir, FLAGS.input, step=_step(ptft_jax))
        return
    if FLAGS.mode == "report":
        if not FLAGS.workdir:
            raise ptft_jax.ConfigError("--mode=report needs --workdir=SWEEP_DIR.")
        ptft_jax.sweep.report(FLAGS.workdir)
        return
    if FLAGS.sweep or FLAGS.sweep_print:
        if not FLAGS.config or not FLAGS.workdir:
            raise ptft_jax.ConfigError("A sweep needs --config=configs/NAME.py and --workdir=DIR.")
        if FLAGS.sweep_print:
            print("\n".join(ptft_jax.sweep.commands(FLAGS.config, FLAGS.workdir, overrides)))
            return
        _initialize(cluster)
        ptft_jax.sweep.run(FLAGS.config, FLAGS.workdir, overrides)
        return
    if not FLAGS.config or not FLAGS.workdir:
        raise ptft_jax.ConfigError("Both --config=configs/NAME.py and --workdir=DIR are required.")
    config = ptft_jax.load_config(FLAGS.config, overrides)  # before jax is imported: a bad config fails at once
    if cluster is None:  # the first line within a second (multi-host processes say what they wait for instead)
        print(f"starting to {FLAGS.mode} {FLAGS.config} in {FLAGS.workdir}: jax, then the data and the model",
              file=sys.stderr, flush=True)
    _initialize(cluster)
    if FLAGS.mode == "train":
        ptft_jax.train(config, FLAGS.workdir, allow_config_change=FLAGS.allow_config_change)
    else:
        ptft_jax.evaluate(config, FLAGS.workdir, step=_step(ptft_jax))


def _step(ptft_jax):
    """--step as evaluate and predict take it: None, "best" or a step number."""
    if FLAGS.step is None or FLAGS.step == "best":
        return FLAGS.step
    if not FLAGS.step.isdigit():
        raise ptft_jax.ConfigError(f"--step={FLAGS.step} is neither a checkpoint step (a whole number) nor 'best'.")
    return int(FLAGS.step)


def _initialize(cluster):
    from ptft_jax.parallel import initialize  # jax: imported only once the config is known to be good
    initialize(cluster)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)

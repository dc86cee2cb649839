"""Command line: python launch.py --config=configs/NAME.py[:preset] --workdir=DIR [--config.KEY=VALUE ...]

Modes: train (default; resumes when WORKDIR has a checkpoint), evaluate (latest checkpoint on the test split),
predict (--input=PATH: class probabilities), report (a sweep's results table). --sweep runs a config's get_sweep().
Multi-host: --coordinator=HOST:PORT --num_processes=N --process_id=I (or PTFT_* environment variables).
"""
import sys

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string("config", None, "Recipe file, optionally with a preset: configs/NAME.py[:preset].")
flags.DEFINE_string("workdir", None, "Run directory: config.json, checkpoints/, metrics.jsonl.")
flags.DEFINE_enum("mode", "train", ["train", "evaluate", "predict", "report"], "What to do; report: a sweep's table.")
flags.DEFINE_bool("sweep", False, "Run every member of the config file's get_sweep() in WORKDIR/<member>.")
flags.DEFINE_bool("sweep_print", False, "Print one launch command per sweep member instead of running them.")
flags.DEFINE_string("input", None, "predict: an .npz (array x) or .npy of images, an image file, or a folder; "
                    "for a text classifier a text file, one text a line.")
flags.DEFINE_bool("allow_config_change", False, "Resume a workdir whose run had a different config.")
flags.DEFINE_string("coordinator", None, "Multi-host: address of process 0, e.g. 10.0.0.1:1234.")
flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.")

_OVERRIDES = []


def split_overrides(argv):
    """Takes --config.KEY=VALUE out of argv (absl does not know them); returns the rest."""
    rest = []
    for arg in argv:
        if arg.startswith("--config."):
            _OVERRIDES.append(arg[len("--config."):])
        else:
            rest.append(arg)
    return rest


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    if not any(a.startswith(("--verbosity", "-v")) for a in sys.argv):
        logging.set_verbosity(logging.WARNING)  # Orbax and grain log every save at INFO
    import ptft_jax
    from ptft_jax.parallel import initialize

    try:
        if FLAGS.mode == "predict":
            _predict(ptft_jax)
            return None
        if FLAGS.mode == "report":
            if not FLAGS.workdir:
                raise ptft_jax.ConfigError("--mode=report needs --workdir=SWEEP_DIR.")
            ptft_jax.sweep.report(FLAGS.workdir)
            return None
        if FLAGS.sweep or FLAGS.sweep_print:
            if not FLAGS.config or not FLAGS.workdir:
                raise ptft_jax.ConfigError("A sweep needs --config=configs/NAME.py and --workdir=DIR.")
            if FLAGS.sweep_print:
                print("\n".join(ptft_jax.sweep.commands(FLAGS.config, FLAGS.workdir, _OVERRIDES)))
                return None
            initialize(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id)
            ptft_jax.sweep.run(FLAGS.config, FLAGS.workdir, _OVERRIDES)
            return None
        if not FLAGS.config or not FLAGS.workdir:
            raise ptft_jax.ConfigError("Both --config=configs/NAME.py and --workdir=DIR are required.")
        initialize(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id)
        config = ptft_jax.load_config(FLAGS.config, _OVERRIDES)
        if FLAGS.mode == "train":
            ptft_jax.train(config, FLAGS.workdir, allow_config_change=FLAGS.allow_config_change)
        else:
            ptft_jax.evaluate(config, FLAGS.workdir)
    except ptft_jax.Interrupted as e:
        print(f"stopped: {e}", file=sys.stderr)
        sys.exit(128 + e.signum)
    except ptft_jax.UserError as e:
        logging.debug("user error", exc_info=True)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def _predict(ptft_jax):
    """Prints one JSON line per input: {"index", "class", "probabilities"}."""
    import json
    import os
    if not FLAGS.workdir or not FLAGS.input:
        raise ptft_jax.ConfigError("--mode=predict needs --workdir=RUN and --input=PATH.")
    probs = ptft_jax.predict(FLAGS.workdir, FLAGS.input)
    with open(os.path.join(FLAGS.workdir, "data.json")) as f:
        names = json.load(f).get("class_names")
    for i, p in enumerate(probs):
        k = int(p.argmax())
        print(json.dumps({"index": i, "class": names[k] if names else k,
                          "probabilities": [round(float(v), 6) for v in p]}))


if __name__ == "__main__":
    app.run(main, argv=split_overrides(sys.argv))

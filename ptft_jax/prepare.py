"""Download and prepare a TFDS dataset as array_record, the format `tfds.data_source` reads without TensorFlow.

    pip install -e '.[tf]'
    python -m ptft_jax.prepare mnist [--data_dir=DIR]

Only this step needs TensorFlow (TFDS uses it to build datasets); training never imports it.
"""
import argparse
import os
import sys


def prepare(name: str, data_dir: str | None = None) -> str:
    data_dir = os.path.expanduser(data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets")
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        raise SystemExit("error: preparing a TFDS dataset needs TensorFlow; install it with: "
                         "pip install -e '.[tf]'")
    import tensorflow_datasets as tfds
    builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare()
    return os.path.join(data_dir, builder.info.full_name)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="TFDS dataset name, e.g. mnist, cifar10, cifar100")
    parser.add_argument("--data_dir", default=None, help="default: $TFDS_DATA_DIR or ~/tensorflow_datasets")
    args = parser.parse_args(argv)
    print(f"prepared {args.name} in {prepare(args.name, args.data_dir)}")


if __name__ == "__main__":
    sys.exit(main())

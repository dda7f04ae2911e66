"""tfmagic-data: write an image folder as TFRecord shards.

    tfmagic-data --dataset=folder:/data/photos --output_dir=/data/photos-tfrecord
    tfmagic-train --dataset=tfrecord:/data/photos-tfrecord --image_size=224 ...

The shards keep every file's bytes (no re-encoding), in the ImageNet schema, training
records in a seeded random order across shards; the test split is the one a folder: run
uses. --output_dir may be any path TensorFlow can write (gs://bucket/... included).

Exit status: 0 written; 1 a bad flag value, a folder that cannot be read or an output
directory that cannot be used (nothing is written); 2 the disk filled up (nothing is left).
"""

import sys

from absl import app, flags

from tfmagic._atomic import no_space_path
from tfmagic.cli import parse_flags
from tfmagic.exit_codes import EXIT_OK, EXIT_OUTPUT_DIR

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset", None, "The image folder to convert: folder:PATH.")
flags.DEFINE_string("output_dir", None, "An empty or new directory for the shards.")
flags.DEFINE_integer("shard_mb", 128, "Approximate size of one shard in MiB.", lower_bound=1)
flags.DEFINE_integer("seed", 0, "Seeds the order of the training records.", lower_bound=0)
flags.mark_flags_as_required(["dataset", "output_dir"])


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from tfmagic import data

    try:
        written = data.write_tfrecords(FLAGS.dataset, FLAGS.output_dir,
                                       shard_bytes=FLAGS.shard_mb * 2**20, seed=FLAGS.seed)
    except data.DataError as error:
        raise app.UsageError(str(error)) from None
    except Exception as error:
        if no_space_path(error) is None:
            raise
        print(f"tfmagic-data: no space left on device writing {FLAGS.output_dir}; nothing was "
              "left there: free some space and run the command again", file=sys.stderr)
        return EXIT_OUTPUT_DIR
    counts = ", ".join(f"{count} {split}" for split, count in written["splits"].items())
    left_out = len(written["bad_files"])
    print(f"{FLAGS.dataset} -> {FLAGS.output_dir}: {counts} images, "
          f"{len(written['classes'])} classes"
          + (f"; {left_out} undecodable files left out (dataset.json)" if left_out else ""))
    return EXIT_OK


def run() -> None:
    """Console-script entry point."""
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()

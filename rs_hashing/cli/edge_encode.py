r"""Ground-station image hashing: prints one line per image, `<file>\t<packed code hex>`.

    rs-hashing edge-encode --model=codes_fp16.tflite IMAGE_OR_FOLDER...

Needs only ai-edge-litert, numpy and Pillow (plus simplejpeg, when installed, for JPEG
pixels identical to the training pipeline's); it never imports TensorFlow, Keras or
absl, so it runs in the edge install (see the README). The hex string is the packed
code (numpy.packbits of code > 0, first bit most significant), K/4 hex digits for K
bits. Images are run in batches (--encode_batch_size) while the next batch is decoded.
An unreadable image is reported on stderr and the others still get their line; the exit
status is then 1.
"""

from __future__ import annotations

import argparse
import os
import sys

DEFAULT_PRESET = None


def parse_args(argv: list[str], prog: str) -> argparse.Namespace:
    from rs_hashing.edge.edge_encoder import JPEG_DECODERS  # pylint: disable=import-outside-toplevel

    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="image-hashing .tflite file (rs-hashing export-tflite)")
    parser.add_argument("--encode_batch_size", type=int, default=16, help="images per interpreter call")
    parser.add_argument("--num_threads", type=int, default=None, help="interpreter threads (default: all)")
    parser.add_argument("--jpeg_decoder", choices=JPEG_DECODERS, default="auto",
                        help="auto: simplejpeg where installed (exact), else Pillow")
    parser.add_argument("images", nargs="+", help="image files or folders of images")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, prog: str = "rs-hashing edge-encode") -> int:
    try:
        from rs_hashing.edge.edge_encoder import EdgeEncoder, find_images  # pylint: disable=import-outside-toplevel
        from rs_hashing.image_files import is_image_file  # pylint: disable=import-outside-toplevel
    except ImportError as e:
        print(f"error: the edge runtime needs ai-edge-litert, numpy and Pillow ({e})", file=sys.stderr)
        return 2
    args = parse_args(sys.argv[1:] if argv is None else argv, prog)
    try:
        encoder = EdgeEncoder(args.model, num_threads=args.num_threads, batch_size=args.encode_batch_size,
                              jpeg_decoder=args.jpeg_decoder)
    except (FileNotFoundError, ImportError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    skipped = [os.path.join(folder, name) for folder in args.images if os.path.isdir(folder)
               for name in os.listdir(folder)
               if os.path.isfile(os.path.join(folder, name)) and not is_image_file(name)]
    if skipped:
        print(f"skipped {len(skipped)} file(s) that are not images, e.g. {skipped[0]}", file=sys.stderr)
    failures = 0
    for path, outputs, error in encoder.iter_files(find_images(args.images)):
        if error is not None:
            failures += 1
            print(f"error: {error}", file=sys.stderr)
        else:
            print(f"{path}\t{outputs['packed'].tobytes().hex()}", flush=False)
    sys.stdout.flush()
    return 1 if failures else 0

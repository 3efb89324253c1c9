"""`python -m imgdiff_onnx.export`: the export step. Needs the `export` extra (torch & co)."""

from __future__ import annotations

import importlib.util
import sys

INSTALL_HINT = (
    "the export step needs PyTorch, transformers and ultralytics, which the lean runtime does not install: "
    "pip install 'imgdiff-onnx[export]'"
)


def main(argv: list[str] | None = None) -> int:
    # looked up, not imported: the export configures the libraries' logging before it imports them
    missing = [name for name in ("torch", "transformers", "ultralytics") if importlib.util.find_spec(name) is None]
    if missing:
        print(f"error: {INSTALL_HINT} (missing: {', '.join(missing)})", file=sys.stderr)
        return 2
    from imgdiff_onnx_export.cli import main as export_main

    return export_main(argv)


if __name__ == "__main__":
    sys.exit(main())

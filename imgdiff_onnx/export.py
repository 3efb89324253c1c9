"""`python -m imgdiff_onnx.export`: the export step. Needs the `export` extra (torch & co)."""

from __future__ import annotations

import sys

INSTALL_HINT = (
    "the export step needs PyTorch, transformers and ultralytics, which the lean runtime does not install: "
    "pip install 'imgdiff-onnx[export]'"
)


def main(argv: list[str] | None = None) -> int:
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
        import ultralytics  # noqa: F401
    except ImportError as exc:
        print(f"error: {INSTALL_HINT} (missing: {exc.name})", file=sys.stderr)
        return 2
    from imgdiff_onnx_export.cli import main as export_main

    return export_main(argv)


if __name__ == "__main__":
    sys.exit(main())

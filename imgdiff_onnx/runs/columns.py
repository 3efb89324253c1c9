"""Which column (Parquet) or field (WebDataset) holds each part of a record: `--columns`.

A record has the fields of Data-Juicer's records: `image_path1`, `image_path2`, `caption1`,
`caption2`, optional `objects1`/`objects2` and `id`. By default a Parquet column and a
WebDataset field carry the same name, except the images of a WebDataset sample, which are its
members `KEY.img1.<ext>` and `KEY.img2.<ext>`. `--columns image_path1=jpg_0,caption1=txt_0`
names other columns for some fields; the rest keep their defaults.

Standard library only.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from ..errors import ParameterError

FIELDS = ("image_path1", "image_path2", "caption1", "caption2", "objects1", "objects2", "id")
IMAGE_FIELDS = ("image_path1", "image_path2")
_WEBDATASET_DEFAULTS = {"image_path1": "img1", "image_path2": "img2"}


@dataclass(frozen=True)
class ColumnMap:
    """Field -> column or member name, for the fields the user renamed (`given`)."""

    given: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, text: str | None) -> "ColumnMap":
        """`FIELD=COLUMN[,FIELD=COLUMN...]`; raises ParameterError naming what is wrong."""
        if not text:
            return cls()
        pairs: dict[str, str] = {}
        for item in text.split(","):
            field, sep, column = (part.strip() for part in item.partition("="))
            if not sep or not field or not column:
                raise ParameterError(f"--columns: expected FIELD=COLUMN, got {item.strip()!r}", "columns")
            if field not in FIELDS:
                close = difflib.get_close_matches(field, FIELDS, n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise ParameterError(f"--columns: unknown field {field!r}{hint}; the fields are {', '.join(FIELDS)}", "columns")
            if field in pairs:
                raise ParameterError(f"--columns: {field} is given twice", "columns")
            pairs[field] = column
        taken: dict[str, str] = {}
        for field, column in pairs.items():
            if column in taken:
                raise ParameterError(f"--columns: {taken[column]} and {field} both name {column!r}", "columns")
            taken[column] = field
        return cls(tuple(sorted(pairs.items())))

    def column(self, field: str, format: str) -> str:
        """The column (Parquet, JSONL) or member name (webdataset) of `field`."""
        for name, column in self.given:
            if name == field:
                return column
        return _WEBDATASET_DEFAULTS.get(field, field) if format == "webdataset" else field

    def is_given(self, field: str) -> bool:
        return any(name == field for name, _ in self.given)

    def text(self) -> str:
        """As --columns takes it (empty: every default), for the run record."""
        return ",".join(f"{field}={column}" for field, column in self.given)

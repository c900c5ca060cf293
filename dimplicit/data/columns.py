"""Which source column is what: the column specification shared by every tabular input.

CSV/TSV and Parquet ingest both name their columns (a header, a Parquet schema, a fixed
format, or a reference store) and then need the same decisions: which column is the label,
which are float regression targets, which are ignored, which are categorical and with which
vocabularies, which label classes exist before the first row is read.  :func:`make_spec`
makes them once, for every input, so the options mean the same whatever the file type.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from dimplicit.data import schema
from dimplicit.data.schema import FeatureLayout

FIXED_FORMATS = ("nsl-kdd", "htru2")
"""Formats with a fixed column layout (no label/target/categorical/ignore/normal options)."""


@dataclass
class ColumnSpec:
    """The decisions about a source's columns.

    Attributes
    ----------
    columns : list of str
        Raw column names, in source order.
    label_index : int or None
        Raw index of the label column.
    target_indices : list of int
        Raw indices of the float regression target columns, in the order given.
    layout : FeatureLayout
        How the remaining columns become features.
    label_classes, normal_classes : list of str
        Classes known before any row is read (the format's seeds, ``normal``, a reference).
    ignored : list of str
        Columns read past and not stored.
    """

    columns: list[str]
    label_index: int | None
    layout: FeatureLayout
    label_classes: list[str]
    normal_classes: list[str]
    ignored: list[str] = field(default_factory=list)
    target_indices: list[int] = field(default_factory=list)

    @property
    def label_column(self) -> str | None:
        return None if self.label_index is None else self.columns[self.label_index]

    @property
    def target_names(self) -> list[str]:
        return [self.columns[i] for i in self.target_indices]


def parse_column_list(value) -> list[str]:
    """``"a, b"`` or ``["a", "b"]`` or None -> ``["a", "b"]`` (empty names dropped)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


def resolve_column(name: str, columns: list[str], what: str) -> int:
    """Index of a column given by name or by 0-based index (as text)."""
    if name in columns:
        return columns.index(name)
    if name.lstrip("-").isdigit():
        i = int(name)
        if 0 <= i < len(columns):
            return i
        raise ValueError(f"{what} column index {i} is out of range (0..{len(columns) - 1})")
    raise ValueError(f"{what} column {name!r} not found; columns are {columns}")


def make_spec(
    fmt: str,
    source,
    header_names: list[str] | None,
    ncols: int | None,
    *,
    label=None,
    categorical: Sequence[str] = (),
    normal: Sequence[str] = (),
    targets: Sequence[str] = (),
    ignore: Sequence[str] = (),
    ref=None,
    vocabularies: Callable[[list[int], int], list[list[str]]] | None = None,
    auto_categorical: Sequence[str] = (),
) -> ColumnSpec:
    """Decide the columns, label, targets, vocabularies and classes of a tabular source.

    Parameters
    ----------
    fmt : str
        ``nsl-kdd`` and ``htru2`` have fixed columns; any other format (``generic``,
        ``parquet``) takes its columns from ``header_names`` (or numbers them).
    source : str or Path
        Named in error messages.
    header_names : list of str, optional
        Column names from the source (a header row, a Parquet schema).
    ncols : int, optional
        Fields per row, when the source has no names.
    label, categorical, normal, targets, ignore
        The user's options (names or 0-based indices); see :func:`~dimplicit.data.ingest
        .ingest_csv`.
    ref : Store, optional
        Reference store: its columns, label, targets, vocabularies and classes are reused
        and must agree with the options.
    vocabularies : callable, optional
        ``vocabularies(raw indices, number of columns) -> one sorted list of values per
        index``: how the source collects the values of its categorical columns (a cheap
        first pass).
    auto_categorical : sequence of str
        Columns that are categorical by their type (Parquet strings), unless they are the
        label, a target or ignored.
    """
    categorical, normal = list(categorical), list(normal)
    targets, ignore = list(targets), list(ignore)
    if fmt in FIXED_FORMATS and (label is not None or categorical or normal or targets or ignore):
        raise ValueError(
            "label, targets, categorical, ignore and normal options apply only to generic "
            f"and parquet sources; format {fmt!r} has a fixed layout"
        )
    if fmt == "nsl-kdd":
        columns = list(schema.NSLKDD_COLUMNS)
        label_name, ignored = schema.NSLKDD_LABEL, list(schema.NSLKDD_IGNORE)
        cat_names, target_names = list(schema.NSLKDD_CATEGORIES), []
        classes, normal_classes = [schema.NSLKDD_NORMAL], [schema.NSLKDD_NORMAL]
    elif fmt == "htru2":
        columns = list(schema.HTRU2_COLUMNS)
        label_name, ignored, cat_names, target_names = schema.HTRU2_LABEL, [], [], []
        classes, normal_classes = ["0", "1"], ["0"]
    else:
        if ref is not None and header_names is None:
            columns = list(ref.attrs["columns"])  # a headerless file takes the reference's names
        else:
            columns = header_names or [f"col{i}" for i in range(ncols)]
        label_name = None
        if label is not None:
            label_name = columns[resolve_column(str(label), columns, "label")]
        elif ref is not None:
            label_name = ref.attrs.get("label_column")
        if targets:
            target_names = [columns[resolve_column(t, columns, "target")] for t in targets]
        else:
            target_names = list(ref.target_names) if ref is not None else []
        ignored = [columns[resolve_column(c, columns, "ignored")] for c in ignore]
        cat_names = [columns[resolve_column(c, columns, "categorical")] for c in categorical]
        roles = [("label", [label_name] if label_name else []), ("target", target_names),
                 ("categorical", cat_names), ("ignored", ignored)]  # fmt: skip
        for k, (role_a, names_a) in enumerate(roles):
            for role_b, names_b in roles[k + 1 :]:
                both = [c for c in names_a if c in names_b]
                if both:
                    raise ValueError(f"column {both[0]!r} cannot be both {role_a} and {role_b}")
        if len(set(target_names)) != len(target_names):
            raise ValueError(f"target columns {target_names} name a column twice")
        taken = {label_name, *target_names, *ignored, *cat_names}
        cat_names += [c for c in auto_categorical if c not in taken]
        # Normal classes take the first codes, so they are known before any row is read.
        classes, normal_classes = list(normal), list(normal)
    if ncols is not None and fmt not in FIXED_FORMATS and ncols != len(columns):
        raise ValueError(  # only a headerless file with a reference
            f"{source}: rows have {ncols} fields but reference {ref.path} has {len(columns)} "
            "columns"
        )
    if header_names is not None and fmt in FIXED_FORMATS and len(header_names) != len(columns):
        raise ValueError(
            f"{source}: header has {len(header_names)} fields, format {fmt!r} has "
            f"{len(columns)} columns"
        )
    label_index = columns.index(label_name) if label_name is not None else None
    target_indices = [columns.index(t) for t in target_names]
    skip = set(ignored) | set(target_names) | ({label_name} if label_name else set())
    feature_columns = [i for i, c in enumerate(columns) if c not in skip]
    if not feature_columns:
        raise ValueError(f"{source}: no feature columns left after removing the label")

    if ref is not None:
        _check_reference(ref, source, fmt, columns, label_name, target_names, cat_names,
                         categorical, normal)  # fmt: skip
        categories = ref.categories
        classes, normal_classes = ref.label_classes, ref.normal_classes
        layout = FeatureLayout(columns, feature_columns, categories)
        if layout.feature_names != ref.feature_names:
            raise ValueError(
                f"{source}: feature layout does not match reference {ref.path} "
                f"({layout.n_features} vs {ref.n_features} features)"
            )
    else:
        if fmt == "nsl-kdd":
            categories = dict(schema.NSLKDD_CATEGORIES)
        elif cat_names:
            vocabs = vocabularies([columns.index(c) for c in cat_names], len(columns))
            categories = dict(zip(cat_names, vocabs, strict=True))
        else:
            categories = {}
        layout = FeatureLayout(columns, feature_columns, categories)
    return ColumnSpec(columns, label_index, layout, list(classes), list(normal_classes),
                      ignored, target_indices)  # fmt: skip


def _check_reference(ref, source, fmt, columns, label_name, target_names, cat_names,
                     categorical, normal) -> None:  # fmt: skip
    ref_cols = list(ref.attrs.get("columns", []))
    if ref_cols != columns:
        raise ValueError(
            f"{source}: columns {columns} do not match reference {ref.path} columns {ref_cols}"
        )
    if ref.attrs.get("label_column") != label_name:
        raise ValueError(
            f"label column {label_name!r} differs from reference {ref.path} "
            f"label column {ref.attrs.get('label_column')!r}"
        )
    if target_names != ref.target_names:
        raise ValueError(
            f"target columns {target_names} differ from reference {ref.path} "
            f"target columns {ref.target_names}"
        )
    if sorted(ref.categories) != sorted(cat_names) and fmt not in FIXED_FORMATS and categorical:
        raise ValueError(
            f"categorical columns {cat_names} differ from reference {ref.path} "
            f"categorical columns {sorted(ref.categories)}"
        )
    if normal and list(normal) != ref.normal_classes:
        raise ValueError(
            f"normal classes {list(normal)} differ from reference {ref.path} "
            f"normal classes {ref.normal_classes}"
        )

"""How a report table is named: its title, its class (ImageNet index, class file, component) and the key its
figures are filed under. A table is (method version, class key, run identity): spurgen/report/collect.py Run.table.
"""

from __future__ import annotations


def class_suffix(key: tuple[int, str, int]) -> str:
    index, file, component = key
    return (
        f" ({index}"
        + (f", {file}" if file else "")
        + (f", component {component}" if component >= 0 else "")
        + ")"
    )


def table_title(class_name: str, table: tuple) -> str:
    """`hummingbird (94, hummingbird_feeder) · identity 45f5b3897553` (the class file and component where
    known)."""
    return f"{class_name}{class_suffix(table[1])} · identity {table[2]}"


def table_id(table: tuple) -> str:
    version, (index, file, component), identity = table
    return f"{version}:{index}:{file}:{component}:{identity}"

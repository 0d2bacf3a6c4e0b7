"""The label space of a model: class ids (as in the data) mapped to contiguous output indices."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LabelSpace:
    """Class ids in ascending order; output index ``i`` of a model is class ``ids[i]``.

    Severstal data has ids 0..4 (0 = OK); class-folder data without an ``ok`` folder starts at 1, so ids and
    indices differ and must be mapped, never assumed equal.
    """

    class_names: dict[int, str]
    critical_class: str

    def __post_init__(self) -> None:
        if self.critical_class not in self.class_names.values():
            raise ValueError(f"critical class {self.critical_class!r} not in {sorted(self.class_names.values())}")

    @property
    def ids(self) -> list[int]:
        return sorted(self.class_names)

    @property
    def names(self) -> list[str]:
        """Class names in output-index order."""
        return [self.class_names[i] for i in self.ids]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def critical_index(self) -> int:
        return self.names.index(self.critical_class)

    def index_of(self, class_id: int) -> int:
        return self.ids.index(int(class_id))

    def id_of(self, index: int) -> int:
        return self.ids[int(index)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "class_names": {str(k): v for k, v in sorted(self.class_names.items())},
            "critical_class": self.critical_class,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LabelSpace:
        return cls({int(k): v for k, v in data["class_names"].items()}, data["critical_class"])

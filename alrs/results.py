"""Result stores: the record of one episode, and the JSON file that keeps such records as they finish.

A store is resumable (an interrupted evaluation keeps every finished run) and records the env settings
its runs were made with, so that results of other settings are never mixed in.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from alrs.errors import UserError
from alrs.formats import RESULTS_FORMAT, read_store
from alrs.io import load_json, save_json


@dataclass
class EpisodeResult:
    """One child training under one schedule and seed."""

    schedule: dict[str, Any]
    seed: int
    final_val_loss: float
    best_val_loss: float
    best_step: int
    diverged: bool
    test_loss_best: float
    test_acc_best: float
    test_loss_final: float
    test_acc_final: float
    curves: dict[str, list[float]] = field(default_factory=dict)


_FLOAT_FIELDS = {f.name for f in fields(EpisodeResult) if f.type == "float"}


def check_record(record: Any, where: str) -> None:
    """A one-line error unless ``record`` is a stored :class:`EpisodeResult` (every field, each of its type)."""
    if not isinstance(record, dict):
        raise UserError(f"{where} is not an object; the file is damaged: delete it (or the entry) and rerun")
    for f in fields(EpisodeResult):
        value = record.get(f.name)
        ok = {
            "float": value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)),
            "int": isinstance(value, int) and not isinstance(value, bool),
            "bool": isinstance(value, bool),
        }.get(str(f.type), isinstance(value, dict))
        if f.name not in record or not ok:
            raise UserError(
                f"{where}: {f.name} = {value!r} is missing or of the wrong type; the file is damaged: "
                "delete it (or the entry) and rerun"
            )
        if isinstance(value, float) and not math.isfinite(value):  # strict JSON writes an undefined figure as null
            raise UserError(
                f"{where}: {f.name} = {value!r} is not finite; the file is damaged: delete it (or the entry) and rerun"
            )


class ResultStore:
    """Episode results kept in a JSON file as they finish, so an interrupted evaluation resumes.

    The file also records the env settings; reusing it with other settings is refused. With
    ``settings=None`` an existing file is read as it is, with the settings it records.
    """

    def __init__(self, path: str | Path, settings: dict[str, Any] | None = None) -> None:
        self.path, self.settings = Path(path), settings if settings is not None else {}
        self.data: dict[str, Any] = {"format": RESULTS_FORMAT, "settings": self.settings, "results": {}}
        if self.path.exists():
            data = read_store(load_json(self.path), self.path)
            for key, record in data["results"].items():
                check_record(record, f"{self.path}: result {key!r}")
            if settings is None:
                self.settings = data.get("settings", {})
            elif data.get("settings") != settings:
                diff = sorted(
                    k
                    for k in set(settings) | set(data.get("settings", {}))
                    if settings.get(k) != data.get("settings", {}).get(k)
                )
                raise UserError(
                    f"{self.path} was made with other settings ({', '.join(diff)}); delete it or write elsewhere"
                )
            self.data = data

    def __contains__(self, key: str) -> bool:
        return key in self.data["results"]

    def __getitem__(self, key: str) -> EpisodeResult:
        record = self.data["results"][key]
        # Strict JSON stores an undefined figure (a diverged child's test loss) as null.
        return EpisodeResult(**{k: math.nan if v is None and k in _FLOAT_FIELDS else v for k, v in record.items()})

    def add(self, key: str, result: EpisodeResult, **extra: Any) -> None:
        """Store ``result`` under ``key`` (and any top-level ``extra`` entries), written at once."""
        self.data["results"][key] = asdict(result)
        self.data.update(extra)
        save_json(self.data, self.path)

    def update(self, **extra: Any) -> None:
        """Set top-level entries of the file (a summary, a note), written at once."""
        self.data.update(extra)
        save_json(self.data, self.path)


def result_key(label: str, seed: int) -> str:
    """A test run's key in its result store: the schedule's label and the seed."""
    return f"{label} | seed {seed}"


__all__ = ["EpisodeResult", "ResultStore", "check_record", "result_key"]

"""Small file helpers of the evidence protocol."""
import json
from typing import Any

from fairseq_metabt import fileio


def atomic_write_json(path: str, data: Any) -> None:
    """Write JSON through a temporary file and ``os.replace``: a crash leaves the old file or the new one."""
    fileio.write_json(path, data)


def read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)

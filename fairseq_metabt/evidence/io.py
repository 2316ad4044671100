"""Small file helpers of the evidence protocol."""
import json
import os
import tempfile
from typing import Any


def atomic_write_json(path: str, data: Any) -> None:
    """Write JSON through a temporary file and ``os.replace``: a crash leaves the old file or the new one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, ensure_ascii=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)

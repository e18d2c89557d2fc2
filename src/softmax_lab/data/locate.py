"""Where the four IDX files are: data.data_dir, else ./data, else the Debian package's folder, else a download."""

from __future__ import annotations

import http.client
import logging
from pathlib import Path

from softmax_lab.data.idx import FILES
from softmax_lab.errors import DataError

log = logging.getLogger(__name__)

SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian/Ubuntu: apt-get install dataset-fashion-mnist
REMEDIES = (
    "Fix: `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or put the four IDX files in ./data, "
    "or point data.data_dir=/path/to/files at them, or set data.download=true (needs a network)."
)


def find_idx_files(directory: Path) -> dict[str, Path] | None:
    """The four files in `directory` or its torchvision layout `FashionMNIST/raw/`, raw or .gz.

    None when none is there; DataError when only some are (a partial copy is a fault, not a miss).
    """
    found, missing = {}, []
    for key, name in FILES.items():
        candidates = [d / (name + ext) for d in (directory, directory / "FashionMNIST" / "raw") for ext in ("", ".gz")]
        hit = next((c for c in candidates if c.is_file()), None)
        if hit is None:
            missing.append(name)
        else:
            found[key] = hit
    if not found:
        return None
    if missing:
        raise DataError(f"{directory}: Fashion-MNIST is incomplete, missing {', '.join(missing)} (raw or .gz). "
                        + REMEDIES)
    return found


def _download(directory: Path) -> dict[str, Path]:
    import torchvision  # only here: its import costs a second

    log.info("Downloading Fashion-MNIST into %s", directory)
    try:
        for train in (True, False):
            torchvision.datasets.FashionMNIST(str(directory), train=train, download=True)
    except (OSError, RuntimeError, http.client.HTTPException) as e:  # URLError is an OSError; torchvision: RuntimeError
        raise DataError(f"downloading Fashion-MNIST into {directory} failed: {e}. " + REMEDIES) from e
    found = find_idx_files(directory)
    if found is None:
        raise DataError(f"downloading Fashion-MNIST into {directory} left no IDX files there. " + REMEDIES)
    return found


def locate_fashion_mnist(data_dir: str | Path | None = None, download: bool = False) -> dict[str, Path]:
    """Paths of the four IDX files.

    data_dir set: there and only there (downloading into it when `download`). Unset: ./data, then
    the Debian package's directory, then a download into ./data when `download`.
    """
    if data_dir is not None:
        directory = Path(data_dir).expanduser()
        found = find_idx_files(directory)
        if found is not None:
            return found
        if download:
            return _download(directory)
        raise DataError(f"data.data_dir={data_dir}: no Fashion-MNIST IDX files there (looked in {directory} and "
                        f"{directory / 'FashionMNIST' / 'raw'}). Fix: copy the four files there, add "
                        "data.download=true, or drop data.data_dir to use ./data or " + str(SYSTEM_DIR) + ".")
    searched = [Path("data"), SYSTEM_DIR]
    for directory in searched:
        found = find_idx_files(directory)
        if found is not None:
            return found
    if download:
        return _download(Path("data"))
    places = ", ".join(f"{d}, {d / 'FashionMNIST' / 'raw'}" for d in searched)
    raise DataError(f"Fashion-MNIST not found. Searched: {places}. " + REMEDIES)

"""stancewatch: sentence-level stance classification for news text.

One installed package. Its parts live in the repository's top-level folders, which the wheel maps
into it (pyproject.toml, [tool.setuptools] package-dir):

    stancewatch.model     <- model/      label schema, encoder, predictor, runtimes, model store
    stancewatch.service   <- service/    the BentoML HTTP service (I/O and batching only)
    stancewatch.training  <- training/   data loading, training, evaluation, promotion
    stancewatch.scoring   <- stancewatch/scoring/   batch scoring (readers, writer, Ray engine)
    stancewatch.settings                 every STANCEWATCH_* environment variable

A wheel installs nothing at top level but `stancewatch`. Run from a checkout or from a Bento
(where the folders sit beside this one and nothing is installed), the lines below let the same
import names find them.
"""

from pathlib import Path as _Path

_ROOT = _Path(__file__).resolve().parent.parent
if not (_Path(__file__).resolve().parent / "model").is_dir() and (_ROOT / "model" / "__init__.py").is_file():
    __path__.append(str(_ROOT))  # noqa: F821  (a package's __path__; subpackages are looked up there too)

# No telemetry. `import openvino` imports its model converter, which sends a Google Analytics event
# from every process that imports it (NNCF sends one per quantisation), forking a process to do so,
# and writes a client id to ~/intel/openvino_ga_cid, unless a consent file under ~/intel says no.
# Both fall back to their no-telemetry stubs when `openvino_telemetry` cannot be imported, which is
# what None in sys.modules means. Measured: `import openvino` 0.18-0.27 s without it, 0.30-0.59 s
# with it. A process that imported the package before stancewatch keeps it.
import sys as _sys  # noqa: E402

_sys.modules.setdefault("openvino_telemetry", None)

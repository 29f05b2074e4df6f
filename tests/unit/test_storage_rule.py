"""Every read and write of the platform goes through geomoe.core.storage: no other module touches the local disk
directly, except the places listed here with their reason. A new direct file access fails this test: route it
through ``geomoe.core.storage`` (which also takes URIs), or add it here with a reason a reviewer can check."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "platform" / "geomoe"
# Calls that touch a file or folder by local path.
PATH_METHODS = {"read_text", "read_bytes", "write_text", "write_bytes", "mkdir", "unlink", "rglob", "glob"}
PATH_METHODS |= {"iterdir", "is_file", "is_dir", "exists", "touch", "rename", "rmdir"}
MODULE_CALLS = {
    ("os", "replace"), ("os", "remove"), ("shutil", "rmtree"), ("shutil", "copytree"), ("shutil", "copy"),
    ("torch", "load"), ("torch", "save"), ("np", "load"), ("np", "save"), ("pq", "read_table"), ("pq", "write_table"),
    ("pads", "dataset"), ("Image", "open"), ("faiss", "read_index"), ("faiss", "write_index"),
}  # fmt: skip
ALLOWED = {
    "core/storage.py": "the storage layer itself",
    "core/ownership.py": "the storage layer's publisher: a finished local temporary folder moved into place",
    "core/cache.py": "verified local copies of published folders (the node-local cache replicas memory-map from)",
    "on_ray/bench/": "benchmarks work in a local scratch folder they create",
    "families/pe_moe/bench_serve.py": "benchmarks work in a local scratch folder they create",
    "core/models/tiny.py": "tiny random models are built into a local cache folder (declared in the spec)",
    "families/pe_moe/factory.py": "model weights load from local folders or hub ids on each node (URIs: not yet)",
    "core/models/encoders.py": "the package's own model configs",
    "core/engines/prompts.py": "versioned prompt files: package data or a local file named in the spec",
    "core/data/refine_rules.py": "versioned rules files: package data or a local file named in the spec",
    "families/pe_moe/index.py": "writes into the local temporary folder atomic_dir publishes; reads the verified "
    "local copy cache.cached_copy made",
    "core/data/caption_store.py": "pq.write_table into the local temporary file atomic_path publishes",
    "core/data/cvogl.py": "torch.save into the local temporary file atomic_path publishes",
    "core/data/track4.py": "Track 4 queries and gallery folders are local (URIs: next step of issue 14)",
    "core/data/synthgeo/": "synthgeo renders into the local temporary folder atomic_dir publishes",
    "on_ray/pipelines/refine.py": "pq.write_table into the local temporary file atomic_path publishes",
    "core/data/image_table.py": "pq.write_table into the local temporary file atomic_path publishes",
    "families/pe_moe/submit.py": "Track 4 submission files (URIs: next step of issue 14)",
    "families/smgeo/localization.py": "decodes bytes already read through storage (Image.open on a BytesIO)",
    "on_ray/serving/config.py": "the Serve config file, which `serve run` reads from local disk too",
    "core/models/checkpoint.py": "mkdir of the local checkpoint folder Ray Train uploads; `geomoe convert` reads "
    "an old local state.pt with torch.load(weights_only=True)",
    "on_ray/train/loop.py": "the fail_once_at test hook's marker file",
    "core/lease.py": "a local run lease is created with O_EXCL (os.open), which pyarrow's file systems do not offer",
    "core/logs.py": "the job's log file is written in a local temporary folder that ownership.upload_dir publishes to "
    "<run>/logs; the Ray session's log folder is this node's",
    "core/tracking.py": "MLflow's client moves the files itself: an artifact staged in a temporary folder, a "
    "registered checkpoint downloaded into the local cache, the embedded SQLite store's file",
}


def direct_file_access(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        fn = node.func
        if isinstance(fn, ast.Name) and fn.id == "open":
            found.append((node.lineno, "open()"))
        elif isinstance(fn, ast.Attribute):
            owner = fn.value.id if isinstance(fn.value, ast.Name) else None
            through_fs = any(k.arg == "filesystem" for k in node.keywords)  # a pyarrow filesystem from storage
            in_memory = (
                bool(node.args) and isinstance(node.args[0], ast.Call) and "BytesIO" in ast.unparse(node.args[0])
            )
            if (owner, fn.attr) in MODULE_CALLS and not (through_fs or in_memory):
                found.append((node.lineno, f"{owner}.{fn.attr}()"))
            elif fn.attr in PATH_METHODS and owner not in {"re", "storage", "self", "os", "glob"}:
                found.append((node.lineno, f".{fn.attr}()"))
    return found


def allowed(relative: str) -> bool:
    return any(relative == key or (key.endswith("/") and relative.startswith(key)) for key in ALLOWED)


def test_only_the_storage_layer_touches_local_files() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if allowed(relative):
            continue
        for line, call in direct_file_access(ast.parse(path.read_text(), str(path))):
            offenders.append(f"platform/geomoe/{relative}:{line}: {call}")
    assert offenders == [], "direct file access outside geomoe.core.storage:\n" + "\n".join(offenders)


def test_the_rule_sees_a_direct_open() -> None:
    code = "from pathlib import Path\nPath('x').read_text()\nopen('y')\nimport numpy as np\nnp.load('z')\n"
    assert [call for _, call in direct_file_access(ast.parse(code))] == [".read_text()", "open()", "np.load()"]

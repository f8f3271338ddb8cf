"""Packaging: kernels/ installs as fastlm.kernels (never as a top-level `kernels`), for both
`pip install .` and `pip install -e .`, and `import fastlm` works without the compiled extension."""
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = ["pyproject.toml", "setup.py", "CMakeLists.txt", "README.md", "csrc", "fastlm", "kernels"]

# Probes run in a fresh interpreter that must not see the running environment's editable fastlm.
HIDE_DEV_INSTALL = r"""
import sys
sys.meta_path = [f for f in sys.meta_path if "fastlm" not in getattr(f, "__module__", "")]
for name in [m for m in sys.modules if "__editable__" in m and "fastlm" in m]:
    del sys.modules[name]  # so a .pth under test loads its own finder, not the cached one
"""
PROBE = HIDE_DEV_INSTALL + r"""
import importlib.util, site
sys.path.insert(0, sys.argv[1])  # ahead of the running venv, whose finder module has the same name
site.addsitedir(sys.argv[1])
import fastlm.kernels, fastlm.kernels.norms
print(fastlm.kernels.__file__)
print(importlib.util.find_spec("kernels"))
"""


def _copy_sources(dest: Path) -> Path:
    src = dest / "src"
    src.mkdir()
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
        elif path.exists():
            shutil.copy2(path, src / name)
    return src


def _pip(*args, cwd):
    env = {**os.environ, "FASTLM_BUILD_NATIVE": "0"}  # packaging only: skip the C++ build
    # --ignore-installed: never uninstall the fastlm of the running environment.
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--ignore-installed", *args],
                   cwd=cwd, env=env, check=True, capture_output=True, text=True, timeout=600)


def _probe(site_dir: Path, cwd: Path) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["FASTLM_REQUIRE_NATIVE"] = "0"
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", PROBE, str(site_dir)], cwd=cwd, env=env,
                         check=True, capture_output=True, text=True, timeout=300)
    return out.stdout.strip().splitlines()


@pytest.mark.parametrize("editable", [False, True], ids=["install", "editable"])
def test_kernels_install_as_fastlm_kernels(tmp_path, editable):
    src = _copy_sources(tmp_path)
    prefix = tmp_path / "prefix"
    if editable:
        _pip("--prefix", str(prefix), "-e", str(src), cwd=tmp_path)
    else:
        _pip("--prefix", str(prefix), str(src), cwd=tmp_path)
    site_dir = Path(sysconfig.get_path("purelib", vars={"base": str(prefix), "platbase": str(prefix)}))
    assert site_dir.is_dir()
    assert not (site_dir / "kernels").exists()
    kernels_file, kernels_spec = _probe(site_dir, cwd=tmp_path)
    expected_root = (src / "kernels") if editable else (site_dir / "fastlm" / "kernels")
    assert Path(kernels_file).resolve().parent == expected_root.resolve()
    assert kernels_spec == "None"


def test_import_without_extension_warns_once_and_require_native_errors(tmp_path):
    """A tree without fastlm/_C*.so: a warning (once) and the reference path; an error when required."""
    src = _copy_sources(tmp_path)
    code = HIDE_DEV_INSTALL + (
        "import warnings, torch\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    import fastlm, fastlm.ops, importlib; importlib.reload(fastlm)\n"
        "print(sum('fall back' in str(w.message) for w in caught))\n"
        "x = torch.randn(3, 5)\n"
        "print(torch.allclose(fastlm.ops.rms_norm(x), x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "FASTLM_REQUIRE_NATIVE"}
    env["PYTHONPATH"] = str(src)
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "True"]

    env["FASTLM_REQUIRE_NATIVE"] = "1"
    out = subprocess.run([sys.executable, "-c", HIDE_DEV_INSTALL + "import fastlm"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode != 0
    assert "FASTLM_REQUIRE_NATIVE=1" in out.stderr

"""``autolabel doctor``: checks the stack and the services, one line each, with the fix for each failure."""

from __future__ import annotations

import importlib
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass

from autolabel.errors import BrokerError, BucketNotFoundError, SettingsError
from autolabel.settings import Settings, get_settings

# The versions the lock file pins; anything else is the version matrix users lost weeks to.
EXPECTED_VERSIONS = {"torch": "2.13.0", "mmcv": "2.1.0", "mmengine": "0.10.7", "mmdet": "3.3.0"}
INSTALL_HINT = "run `make setup` (scripts/bootstrap.sh) to install the pinned stack"


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def _version_check(module: str) -> Check:
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        return Check(module, False, f"not importable ({exc})", INSTALL_HINT)
    version = getattr(mod, "__version__", "unknown")
    expected = EXPECTED_VERSIONS[module]
    if version.split("+")[0] != expected:
        return Check(module, False, version, f"expected {expected}; {INSTALL_HINT}")
    return Check(module, True, version)


def check_torch() -> list[Check]:
    checks = [_version_check("torch")]
    if not checks[0].ok:
        return checks
    import torch

    if torch.cuda.is_available():
        names = ", ".join(f"{i}: {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count()))
        checks.append(Check("cuda", True, f"available (CUDA {torch.version.cuda}; {names})"))
    else:
        checks.append(Check("cuda", True, "not available: workers run on CPU"))
    return checks


def check_mmcv() -> list[Check]:
    checks = [_version_check("mmcv")]
    if not checks[0].ok:
        return checks
    try:
        # mmcv's pure-Python install imports fine but lacks _ext; nms needs the compiled ops.
        import torch
        from mmcv.ops import nms

        nms(torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([0.9]), 0.5)
    except Exception as exc:
        checks.append(Check("mmcv ops", False, f"compiled ops do not load ({exc})",
                            "rebuild mmcv with MMCV_WITH_OPS=1 against the installed torch: " + INSTALL_HINT))
    else:
        checks.append(Check("mmcv ops", True, "compiled ops load"))
    return checks


def check_redis(settings: Settings) -> Check:
    from autolabel.progress import broker_problem, ping_broker

    try:
        ping_broker(settings.broker_url)
    except BrokerError as exc:
        return Check("redis", False, *broker_problem(settings.broker_url, exc.__cause__ or exc))
    return Check("redis", True, f"{settings.masked()['broker_url']} answers")


def check_object_store(settings: Settings, *, create_bucket: bool = False) -> Check:
    from autolabel.storage import ObjectStore

    where = f"bucket {settings.bucket!r} at {settings.s3_endpoint_url or 'AWS S3'}"
    store = ObjectStore.from_settings(settings, connect_timeout=2, retries=0)
    try:
        if create_bucket:
            store.ensure_bucket()
        store.check_bucket()
    except BucketNotFoundError:
        return Check("object store", False, f"{where} does not exist",
                     "`autolabel doctor --create-bucket` creates it, or set AUTOLABEL_BUCKET to an existing bucket")
    except Exception as exc:
        return Check("object store", False, f"{where} does not answer ({exc})",
                     "start the S3 server, create the bucket, or fix AUTOLABEL_S3_* / AUTOLABEL_BUCKET")
    return Check("object store", True, f"{where} answers")


def diagnose(*, ml_stack: bool = True, create_bucket: bool = False) -> tuple[list[Check], Settings | None]:
    """Every check, with the settings read from the environment; refused settings are failed checks
    (the variable and the reason, never the value: it can be a secret) and the services go unchecked,
    since where they are is unknown."""
    try:
        settings = get_settings()
    except SettingsError as exc:
        refused = [Check(name, False, reason, f"set {name} to a valid value or unset it (README: Settings)")
                   for name, reason in exc.problems]
        return run_checks(None, ml_stack=ml_stack) + refused, None
    return run_checks(settings, ml_stack=ml_stack, create_bucket=create_bucket), settings


def run_checks(settings: Settings | None, *, ml_stack: bool = True, create_bucket: bool = False) -> list[Check]:
    """The stack's checks, and the services' where there are settings to find them by."""
    checks = [Check("python", sys.version_info[:2] == (3, 11), platform.python_version(),
                    "use Python 3.11, the version the lock file is made for")]
    if ml_stack:
        checks += check_torch()
        checks += check_mmcv()
        checks += [_version_check("mmengine"), _version_check("mmdet")]
    if settings is not None:
        checks += [check_redis(settings), check_object_store(settings, create_bucket=create_bucket)]
    return checks


def report(checks: list[Check], settings: Settings | None, echo: Callable[[str], None]) -> bool:
    """Print every check and the masked settings; return whether all checks passed."""
    for check in checks:
        echo(f"{'ok  ' if check.ok else 'FAIL'} {check.name:<13} {check.detail}")
    if settings is None:
        echo("settings: refused (above); Redis and the object store are not checked until they are fixed")
    else:
        echo("settings:")
        for name, value in settings.masked().items():
            echo(f"     {name:<21} {value}")
    failed = [check for check in checks if not check.ok]
    for check in failed:
        echo(f"fix: {check.name}: {check.fix}")
    return not failed

"""doit entry point: the tasks come from the recipes through hurdxen.tasks (`doit list` shows them).

The project directory is this file's directory, wherever the hurdxen package is installed.
"""

from pathlib import Path

from hurdxen.tasks import (  # noqa: F401 - doit collects task_* names from this module
    DOIT_CONFIG,
    configure,
    task_base,
    task_boot,
    task_build,
    task_bundle,
    task_canary,
    task_gnumach,
    task_hurd,
    task_hurd_modules,
    task_image,
    task_mig,
    task_pins,
    task_publish,
    task_pvgrub2,
    task_reproduce,
    task_rootdisk,
    task_sources,
    task_toolchain,
    task_verify,
)

configure(Path(__file__).resolve().parent)

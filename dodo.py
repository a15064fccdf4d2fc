"""doit entry point: the tasks come from the recipes through hurdxen.tasks (`doit list` shows them)."""

from hurdxen.tasks import (  # noqa: F401 - doit collects task_* names from this module
    DOIT_CONFIG,
    task_base,
    task_build,
    task_gnumach,
    task_hurd_modules,
    task_image,
    task_mig,
    task_pvgrub2,
    task_sources,
)

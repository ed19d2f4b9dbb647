"""The pipeline's stages, in the order a batch goes through them: the one list of their names.

Each stage's module names itself (`STAGE`); counters, metrics and the processing trace take the
names from here, so a stage added is counted everywhere at once.
"""

from __future__ import annotations

from cohort.core.stages import batch_dedup, dedup, extract, route, validate

# denorm and transform are declared seams (dataset configuration plugs them in); they book no failures yet
DENORM_STAGE = "denorm"
TRANSFORM_STAGE = "transform"
STAGES = (extract.STAGE, validate.STAGE, batch_dedup.STAGE, dedup.STAGE, DENORM_STAGE, TRANSFORM_STAGE, route.STAGE)
CORE_STAGE = "core"  # where a failure inside the core is booked when no single stage can be named
STORE_STAGE = "store"  # where an event the store refused every time is booked
FAILURE_STAGES = (*STAGES, CORE_STAGE, STORE_STAGE)  # every stage a quarantined event may be booked at

"""The task families that come with the orchestrator, one module each (`orchestrator.family.FAMILY_MODULES`):
multi-label recognition (`mlr`) and OOD detection (`ood`)."""

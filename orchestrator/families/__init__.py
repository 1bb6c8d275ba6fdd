"""The task families that come with the orchestrator, one module each (`orchestrator.family.BUILTIN`):
multi-label recognition (`mlr`) and OOD detection (`ood`)."""

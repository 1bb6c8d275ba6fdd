"""What the stored runs say: the trial runs read once, the comparison, OOD and negation tables in
every text format, the plots, the `table` and `status` commands."""

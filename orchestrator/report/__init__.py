"""What the stored runs say: the trial runs read once, the text formats every family's table is
written in, the `table`, `status` and `ui` commands. The tables themselves are the families'."""

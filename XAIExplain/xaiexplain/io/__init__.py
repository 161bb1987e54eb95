"""Results on disk: the output folder (maps, region table, summary) written all or nothing, read back,
and PNG previews."""

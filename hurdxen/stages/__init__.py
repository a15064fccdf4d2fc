"""The build stages, one subpackage each; every one follows hurdxen.pipeline.stage's contract."""

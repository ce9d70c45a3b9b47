"""Batch scoring of article archives: streaming readers, checkpointed writer, the scoring pipeline."""

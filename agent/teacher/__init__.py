"""Synthetic data: teacher models (models), the filters and deduplication a document passes
(quality), and the resumable generation of a corpus (corpus)."""

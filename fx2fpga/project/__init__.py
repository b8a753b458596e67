"""The project folder: ``folder`` (every file of it), ``writer`` (atomic write, manifest) and ``report`` (report.md)."""
